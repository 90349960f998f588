//! What the values of a configuration must look like, and how they are
//! shown: the rules a policy file and the builders share for the URLs
//! Palisade calls or sends a browser to, the paths it serves, HTTP tokens
//! (header and cookie names), URLs shown in errors and logs without
//! their credentials, text shown in a page, and the key files of session
//! cookies ([`key_file`]). Each rule is written once
//! here, so a file and code that builds the same setting meet the same
//! rule.

/// The longest duration a configuration takes, ten years: in a policy
/// file (a longer one is refused when it loads) and in code (a longer
/// timeout is refused or taken as this), so that no sum of a duration and
/// the time of day overflows.
pub const LONGEST_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// What stands for the tenant in an issuer pattern
/// (`https://login.microsoftonline.com/{tenant}/v2.0`) and its URLs.
pub const TENANT: &str = "{tenant}";

/// Whether `issuer` is an issuer pattern: `Ok(true)` when it holds
/// [`TENANT`] once, `Ok(false)` when it does not; more than once is no
/// issuer, and the error says so.
///
/// ```
/// use palisade_core::syntax::issuer_pattern;
/// assert_eq!(issuer_pattern("https://login.example/{tenant}/v2.0"), Ok(true));
/// assert_eq!(issuer_pattern("https://login.example/realms/shop"), Ok(false));
/// assert!(issuer_pattern("https://{tenant}.example/{tenant}").is_err());
/// ```
pub fn issuer_pattern(issuer: &str) -> Result<bool, &'static str> {
    match issuer.matches(TENANT).count() {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err("an issuer pattern has one `{tenant}`"),
    }
}

/// Why [`TENANT`] cannot stand where `url` has it, for a URL a tenant's
/// keys are fetched from (an issuer pattern's discovery, a `jwksUri`):
/// in the host it must begin it, before a fixed domain of two labels at
/// least (`https://{tenant}.idp.example/`), so that a token naming a
/// tenant cannot choose the server asked (`https://{tenant}/`,
/// `https://login.{tenant}/`); a path segment or the port is fine (the
/// host is fixed). `None` when the place is fine or there is none.
///
/// ```
/// use palisade_core::syntax::tenant_misplaced;
/// assert_eq!(tenant_misplaced("https://login.example/{tenant}/v2.0"), None);
/// assert_eq!(tenant_misplaced("https://{tenant}.us.auth0.example/"), None);
/// assert_eq!(tenant_misplaced("http://127.0.0.1:{tenant}/realms/shop"), None);
/// assert!(tenant_misplaced("https://{tenant}/").is_some());
/// assert!(tenant_misplaced("https://login.{tenant}/").is_some());
/// assert!(tenant_misplaced("https://{tenant}.com/").is_some());
/// assert!(tenant_misplaced("https://{tenant}.com./").is_some());
/// assert!(tenant_misplaced("http://[::ffff:{tenant}]/").is_some());
/// assert_eq!(tenant_misplaced("http://[::1]:{tenant}/realms/shop"), None);
/// assert_eq!(tenant_misplaced("https://{tenant}-idp.example.com:8443/"), None);
/// ```
#[must_use]
pub fn tenant_misplaced(url: &str) -> Option<&'static str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if !authority.contains(TENANT) {
        return None;
    }
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_and_port.find(']') {
        // An IPv6 literal: the host is the brackets and what they hold.
        Some(end) if host_and_port.starts_with('[') => &host_and_port[..=end],
        _ => host_and_port
            .rsplit_once(':')
            .map_or(host_and_port, |(host, _)| host),
    };
    if authority
        .split_once('@')
        .is_some_and(|(user, _)| user.contains(TENANT))
    {
        return Some("`{tenant}` in the URL's user information");
    }
    if !host.contains(TENANT) {
        return None;
    }
    // The fixed domain after the tenant's own label: two labels at least
    // (`{tenant}.com.` is any `.com` host).
    let fixed_labels = |domain: &str| {
        domain
            .split_once('.')
            .map_or(0, |(_, fixed)| fixed.split('.').filter(|l| !l.is_empty()).count())
    };
    match host.strip_prefix(TENANT) {
        Some(domain) if fixed_labels(domain) >= 2 => None,
        _ => Some(
            "`{tenant}` may begin the host, before a fixed domain of two labels at least (`https://{tenant}.idp.example/`), or fill a path segment: elsewhere in the host a token naming a tenant would choose the server its keys are fetched from",
        ),
    }
}

/// Whether `tenant` may stand for [`TENANT`] in an issuer pattern: 1 to
/// 128 letters, digits, `.`, `-` and `_` (a GUID, a domain name), not
/// starting with `.`, so that it stays one path segment or host label.
///
/// ```
/// use palisade_core::syntax::is_tenant;
/// assert!(is_tenant("9188040d-6c67-4c5b-b112-36a304b66dad") && is_tenant("contoso.example"));
/// assert!(!is_tenant("") && !is_tenant("a/b") && !is_tenant("..") && !is_tenant("x?y"));
/// ```
#[must_use]
pub fn is_tenant(tenant: &str) -> bool {
    (1..=128).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !tenant.starts_with('.')
}

/// The algorithms a client's private key signs its assertions with
/// (`private_key_jwt`: `OidcLogin.spec.clientKey.algorithm` and the
/// sign-in builder's client key), the default first.
pub const CLIENT_KEY_ALGORITHMS: [&str; 7] = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"];

/// An RFC 9110 `token` (one or more of letters, digits and
/// ``!#$%&'*+-.^_`|~``): what an HTTP header name, or a cookie name in
/// `Set-Cookie`, is made of.
///
/// ```
/// use palisade_core::syntax::is_http_token;
/// assert!(is_http_token("X-Forwarded-Access-Token") && is_http_token("session_1"));
/// assert!(!is_http_token("") && !is_http_token("x token") && !is_http_token("a:b"));
/// ```
#[must_use]
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What [`is_cookie_name`] asks, in the words of a refusal.
pub const COOKIE_NAME_RULE: &str = "a cookie name is 1 to 128 letters, digits and ``!#$%&'*+-.^_`|~`` (no separator that would end it or add an attribute)";

/// The longest cookie name [`is_cookie_name`] accepts.
pub const MAX_COOKIE_NAME_LEN: usize = 128;

/// A cookie name Palisade sets (a sign-in session, a SPNEGO session): an
/// RFC 6265 `cookie-name`, that is an RFC 9110 token ([`is_http_token`]:
/// no separator that would end the name or add an attribute), of at most
/// [`MAX_COOKIE_NAME_LEN`] characters. A policy file and the builders
/// apply the same rule.
///
/// ```
/// use palisade_core::syntax::is_cookie_name;
/// assert!(is_cookie_name("__Host-session") && is_cookie_name("app.sid"));
/// assert!(!is_cookie_name("sid; Domain=evil.example") && !is_cookie_name("a=b") && !is_cookie_name(""));
/// ```
#[must_use]
pub fn is_cookie_name(name: &str) -> bool {
    name.len() <= MAX_COOKIE_NAME_LEN && is_http_token(name)
}

/// A path this service serves an endpoint at (sign-in's callback, login
/// and logout paths): it starts with one `/`, and has no query, fragment,
/// backslash, space or control character.
#[must_use]
pub fn is_service_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path
            .bytes()
            .any(|b| matches!(b, b'?' | b'#' | b'\\' | b' ') || b.is_ascii_control())
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host: a
/// name (non-ASCII allowed), an IPv4 address or a bracketed IPv6 address,
/// and an optional port (at most 65535); user information is allowed
/// (`https://user:pass@host/`). The scheme is in lower case, as an issuer
/// is compared exactly with the `iss` of its tokens and its discovery
/// document. No backslash (a URL parser reads it as `/`), white space or
/// control character. The rule of every URL a policy file or a builder
/// gives for an issuer, its keys or its endpoints.
///
/// ```
/// use palisade_core::syntax::is_http_url;
/// assert!(is_http_url("https://kc.example:8443/realms/shop"));
/// assert!(is_http_url("http://[::1]:8080/certs") && is_http_url("https://bücher.example/"));
/// assert!(!is_http_url("https:///certs") && !is_http_url("https://:443/"));
/// assert!(!is_http_url("HTTPS://kc.example/") && !is_http_url("https://kc.example:70000/"));
/// assert!(!is_http_url("file:///etc/jwks.json") && !is_http_url("https://[::1/"));
/// assert!(!is_http_url("https://evil\\@good.example/"));
/// ```
#[must_use]
pub fn is_http_url(url: &str) -> bool {
    http_authority(url).is_some()
}

/// [`is_http_url`] for a URL that may hold [`TENANT`] where a tenant's
/// name goes (a host label, a path segment, a port): checked as a
/// tenant's URL would be.
///
/// ```
/// use palisade_core::syntax::is_http_url_pattern;
/// assert!(is_http_url_pattern("https://login.example/{tenant}/v2.0"));
/// assert!(is_http_url_pattern("https://{tenant}.idp.example/") && is_http_url_pattern("https://idp:{tenant}/"));
/// assert!(!is_http_url_pattern("https://{tenant}/x y"));
/// ```
#[must_use]
pub fn is_http_url_pattern(url: &str) -> bool {
    is_http_url(&url.replace(TENANT, "0"))
}

/// The authority (user information, host and port) of an absolute
/// http(s) URL with a valid host, as [`is_http_url`] reads it.
fn http_authority(url: &str) -> Option<&str> {
    if url
        .bytes()
        .any(|b| b == b'\\' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host_ok, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        let ipv6 = inside.contains(':')
            && inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (ipv6, after)
    } else {
        let host = host_port.split(':').next().unwrap_or_default();
        let name = host.bytes().any(|b| b.is_ascii_alphanumeric() || !b.is_ascii())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || !b.is_ascii() || matches!(b, b'.' | b'-' | b'_'));
        (name, &host_port[host.len()..])
    };
    // `:` alone is an empty port, as the URL standard allows.
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
        });
    (host_ok && port_ok).then_some(authority)
}

/// Whether `origin` is a web origin as a browser sends it in `Origin`:
/// `http://` or `https://`, an ASCII host (an IDN in its `xn--` form) and
/// an optional port ([`is_http_url`]), no user information and nothing
/// after them (a single trailing `/` is allowed). Sign-in's
/// `externalOrigin`, a DPoP origin.
///
/// ```
/// use palisade_core::syntax::is_origin;
/// assert!(is_origin("https://shop.example") && is_origin("http://127.0.0.1:8080/"));
/// assert!(!is_origin("https://shop.example/app") && !is_origin("https://u@shop.example"));
/// assert!(!is_origin("shop.example") && !is_origin("https://shop.example?x"));
/// assert!(!is_origin("https://bücher.example") && !is_origin("https://shop.example:"));
/// ```
#[must_use]
pub fn is_origin(origin: &str) -> bool {
    let Some(authority) = http_authority(origin) else {
        return false;
    };
    let scheme = if origin.starts_with("https://") { 8 } else { 7 };
    let rest = &origin[scheme + authority.len()..];
    !authority.contains('@')
        && authority.is_ascii()
        && !authority.ends_with(':')
        && (rest.is_empty() || rest == "/")
}

/// An origin as a browser writes it in `Origin`, and as origins are
/// compared (a service's own, the trusted ones): lower case, without a
/// final `/` or its scheme's default port (`https://shop.example` for
/// `https://shop.example:443`).
///
/// ```
/// use palisade_core::syntax::origin_key;
/// assert_eq!(origin_key("HTTPS://Shop.example:443/"), "https://shop.example");
/// assert_eq!(origin_key("http://shop.example:443"), "http://shop.example:443");
/// ```
#[must_use]
pub fn origin_key(origin: &str) -> String {
    let o = origin.trim_end_matches('/').to_ascii_lowercase();
    let default = if o.starts_with("https://") { ":443" } else { ":80" };
    match o.strip_suffix(default) {
        Some(bare) => bare.to_owned(),
        None => o,
    }
}

/// The origin part of an absolute URL, of any scheme: its scheme and
/// authority, up to the path, query or fragment; `None` for a value
/// without `://`. As written: compare it with [`origin_key`].
///
/// ```
/// use palisade_core::syntax::url_origin;
/// assert_eq!(url_origin("https://Shop.example:8443/cart?x#y"), Some("https://Shop.example:8443"));
/// assert_eq!(url_origin("https://shop.example?x"), Some("https://shop.example"));
/// assert_eq!(url_origin("android-app://com.example/"), Some("android-app://com.example"));
/// assert_eq!(url_origin("/cart"), None);
/// ```
#[must_use]
pub fn url_origin(url: &str) -> Option<&str> {
    let authority = url.find("://")? + 3;
    let end = url[authority..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |end| authority + end);
    Some(&url[..end])
}

/// Where a browser may be sent (sign-in's `postLogoutRedirectUri`): a path
/// of this service (`/`, `/bye?x=1`: a query is allowed, made absolute on
/// the request's origin), or an absolute http(s) URL with a host and no
/// user information ([`is_http_url`]). Never `//host` (another site,
/// written as a path), a backslash, a space or a control character.
#[must_use]
pub fn is_landing_uri(uri: &str) -> bool {
    if uri
        .bytes()
        .any(|b| b == b'\\' || b == b' ' || b.is_ascii_control())
    {
        return false;
    }
    if uri.starts_with('/') {
        return !uri.starts_with("//");
    }
    http_authority(uri).is_some_and(|a| !a.contains('@'))
}

/// Why `timeout` cannot be a Redis store's command timeout (the sign-in
/// session store's, the DPoP replay store's), if it cannot: at least
/// 10 ms, which a round trip on a network may take, at most 60 s, after
/// which the request that waits on it has long been given up.
///
/// ```
/// use std::time::Duration;
/// use palisade_core::syntax::redis_command_timeout_problem as problem;
/// assert_eq!(problem(Duration::from_millis(500)), None);
/// assert_eq!(problem(Duration::ZERO), Some("must be between 10 ms and 60 s"));
/// ```
#[must_use]
pub fn redis_command_timeout_problem(timeout: std::time::Duration) -> Option<&'static str> {
    use std::time::Duration;
    (!(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout))
        .then_some("must be between 10 ms and 60 s")
}

/// Keeps a value inside an HTTP quoted-string (a challenge's
/// `error_description`, `realm`): printable ASCII without `"` and `\`
/// (RFC 6750 §3 limits `error_description` to that set anyway), the rest
/// dropped.
///
/// ```
/// use palisade_core::syntax::quote_safe;
/// assert_eq!(quote_safe("token expired"), "token expired");
/// assert_eq!(quote_safe("a\"b\\c\nd é~"), "abcd ~");
/// ```
#[must_use]
pub fn quote_safe(s: &str) -> String {
    let allowed = |c: char| (' '..='~').contains(&c) && c != '"' && c != '\\';
    // Most values need no filtering: copied whole, not char by char.
    if s.chars().all(allowed) {
        return s.to_owned();
    }
    s.chars().filter(|&c| allowed(c)).collect()
}

/// What is wrong with `name=value` as an extra parameter of a sign-in's
/// authorization request (`authorizationParams`, Auth0's `audience`,
/// Google's `access_type`), if anything: a name that is empty or not a
/// plain name; one the relying party sets itself and whose value its
/// security rests on (`state`, `nonce`, PKCE's, `redirect_uri`,
/// `response_type`, …), or that changes how the answer comes back
/// (`response_mode`, `request`), in any letter case (some servers read
/// names so); one that asks the issuer for something only a check of the
/// ID token afterwards would make sure of, which the sign-in does not make
/// (`max_age`, `acr_values`, `claims`, Auth0's `organization`: the browser
/// carries the request and may drop them); or `prompt=none`, which refuses
/// every user without a session at the issuer.
///
/// ```
/// use palisade_core::syntax::authorization_param_refusal as refusal;
/// assert_eq!(refusal("audience", "https://api.example"), None);
/// assert_eq!(refusal("prompt", "login"), None);
/// assert!(refusal("nonce", "n").is_some());
/// assert!(refusal("Redirect_URI", "https://evil.example").is_some());
/// assert!(refusal("acr_values", "mfa").is_some());
/// assert!(refusal("prompt", "none").is_some());
/// assert!(refusal("a b", "x").is_some());
/// ```
#[must_use]
pub fn authorization_param_refusal(name: &str, value: &str) -> Option<&'static str> {
    const SET_BY_THE_RELYING_PARTY: [&str; 12] = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
        "request",
        "request_uri",
        "client_secret",
    ];
    const UNCHECKED_AFTERWARDS: [&str; 4] = ["max_age", "acr_values", "claims", "organization"];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Some("is not a parameter name (letters, digits, `_`, `-`, `.`)");
    }
    let among = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if among(&SET_BY_THE_RELYING_PARTY) {
        return Some("is set by the sign-in itself (scopes have a field of their own)");
    }
    if among(&UNCHECKED_AFTERWARDS) {
        return Some(
            "asks for what only a check of the ID token would make sure of (the browser may drop it), which the sign-in does not make",
        );
    }
    (name.eq_ignore_ascii_case("prompt") && value.split(' ').any(|v| v == "none"))
        .then_some("`none` refuses every user without a session at the issuer")
}

/// The first of a sign-in's extra authorization parameters that cannot be
/// sent, and why: [`authorization_param_refusal`], or a name given twice
/// (in any letter case), which the issuer would refuse every sign-in for
/// (RFC 6749 §3.1).
///
/// ```
/// use palisade_core::syntax::authorization_params_refusal as refusal;
/// assert_eq!(refusal([("audience", "a"), ("prompt", "login")]), None);
/// assert_eq!(refusal([("audience", "a"), ("Audience", "b")]).map(|(name, _)| name), Some("Audience"));
/// assert_eq!(refusal([("nonce", "n")]).map(|(name, _)| name), Some("nonce"));
/// ```
#[must_use]
pub fn authorization_params_refusal<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(&'a str, String)> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        if let Some(refusal) = authorization_param_refusal(name, value) {
            return Some((name, format!("`{name}` {refusal}")));
        }
        if seen.iter().any(|other| other.eq_ignore_ascii_case(name)) {
            return Some((
                name,
                format!("`{name}` is given twice, in other letters: the issuer would refuse every sign-in"),
            ));
        }
        seen.push(name);
    }
    None
}

/// What is wrong with `claim` as the claim read as a user's name
/// (`principalClaim`, `principal_claim`), if anything.
///
/// ```
/// use palisade_core::syntax::principal_claim_refusal as refusal;
/// assert_eq!(refusal("email"), None);
/// assert!(refusal("").is_some());
/// ```
#[must_use]
pub fn principal_claim_refusal(claim: &str) -> Option<&'static str> {
    claim
        .trim()
        .is_empty()
        .then_some("must not be empty (leave it out instead)")
}

/// What is wrong with `claim` as the claim an issuer's roles are read
/// from (`rolesClaim`, `roles_claim`), if anything: empty, or one of
/// Keycloak's own (`realm_access`, `resource_access`, or a path into them),
/// which are read as realm and client roles without it, and whose keys
/// would become roles (`roles`, every client's id).
///
/// ```
/// use palisade_core::syntax::roles_claim_refusal as refusal;
/// assert_eq!(refusal("groups"), None);
/// assert_eq!(refusal("realm_access_roles"), None);
/// assert!(refusal("realm_access").is_some());
/// assert!(refusal("resource_access.app.roles").is_some());
/// assert!(refusal("").is_some());
/// ```
#[must_use]
pub fn roles_claim_refusal(claim: &str) -> Option<String> {
    if claim.is_empty() {
        return Some("must not be empty (leave it out instead)".into());
    }
    let keycloaks = ["realm_access", "resource_access"].iter().any(|own| {
        claim
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    });
    keycloaks.then(|| {
        format!(
            "`{claim}` names Keycloak's roles, which are read without it (`realm_access.roles` as realm roles, \
             `resource_access.CLIENT.roles` as client roles): leave it out"
        )
    })
}

/// Why `resource` cannot be a protected resource's identifier (RFC 9728
/// §1.2), if it cannot: an http(s) URL with a host, printable and without
/// quotes (it is quoted in every `WWW-Authenticate`), without a query or
/// fragment, and without credentials (`user:pass@`; it is published in
/// every 401 and the metadata document). The words follow the URL in an
/// error (shown with [`url_without_credentials`]).
///
/// ```
/// use palisade_core::syntax::resource_identifier_problem as problem;
/// assert_eq!(problem("https://shop.example/details"), None);
/// assert_eq!(problem("https://shop.example/?page=1"), Some("must have no query or fragment (RFC 9728 §1.2)"));
/// assert_eq!(problem("https://app:pw@shop.example"), Some("must have no credentials (`user:pass@`)"));
/// assert_eq!(problem("ftp://shop.example"), Some("is not an http(s) URL"));
/// ```
#[must_use]
pub fn resource_identifier_problem(resource: &str) -> Option<&'static str> {
    let Some(rest) = resource
        .strip_prefix("https://")
        .or_else(|| resource.strip_prefix("http://"))
    else {
        return Some("is not an http(s) URL");
    };
    if resource
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'\\')
    {
        return Some("must be a URL of printable characters without quotes");
    }
    if resource.contains(['?', '#']) {
        return Some("must have no query or fragment (RFC 9728 §1.2)");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Some("has no host");
    }
    if authority.contains('@') {
        return Some("must have no credentials (`user:pass@`)");
    }
    None
}

/// `url` as it may be shown in a log line, a `Debug` output or an error:
/// its user information (a user name, a password) replaced by `***`, and
/// the value of every query parameter likewise (a signed URL's `sig=`, an
/// `api_key=`, `redis+unix:///run/redis.sock?pass=…`, a bare `?value`),
/// but Redis's harmless `db` and `protocol`; a fragment is hidden whole,
/// but Redis's `#insecure`, which says that certificates go unchecked.
///
/// It does not parse the URL, so it also hides what a URL parser would
/// refuse: everything between `://` and the last `@` counts as user
/// information, even a password with an unescaped `/` or `@` in it. When a
/// `?` or `#` comes before that `@`, the `@` may be a query value's or a
/// fragment's (a password `Tr0ub@dor` in `?pass=`), so what follows it is
/// hidden too: the URL is shown as its scheme and `***`. A `@` in the path
/// hides more than it needs to, never less.
///
/// ```
/// use palisade_core::syntax::url_without_credentials as shown;
/// assert_eq!(shown("redis://app:s3cret@redis.internal:6380/2"), "redis://***@redis.internal:6380/2");
/// assert_eq!(shown("rediss://:pa/ss@h/0"), "rediss://***@h/0");
/// assert_eq!(shown("redis+unix:///run/redis.sock?pass=Tr0ub@dor"), "redis+unix://***");
/// assert_eq!(shown("redis+unix:///run/redis.sock?db=1&pass=s3cret"), "redis+unix:///run/redis.sock?db=1&pass=***");
/// assert_eq!(shown("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// assert_eq!(shown("https://keys.example/jwks.json?sv=1&sig=abc#k"), "https://keys.example/jwks.json?sv=***&sig=***#***");
/// assert_eq!(shown("https://keys.example/jwks.json?s3cret"), "https://keys.example/jwks.json?***");
/// assert_eq!(shown("rediss://:pw@redis.internal/0#insecure"), "rediss://***@redis.internal/0#insecure");
/// ```
#[must_use]
pub fn url_without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let mut shown = String::with_capacity(url.len());
    if !scheme.is_empty() || url.starts_with("://") {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    let rest = match rest.rfind('@') {
        // The `@` may be within the query or the fragment: what follows
        // it may be the end of a secret.
        Some(at) if rest[..at].contains(['?', '#']) => {
            shown.push_str("***");
            return shown;
        }
        Some(at) => {
            shown.push_str("***@");
            &rest[at + 1..]
        }
        None => rest,
    };
    let (rest, fragment) = match rest.split_once('#') {
        // Redis's `#insecure` (certificate checks off) is a setting to see.
        Some((rest, "insecure")) => (rest, "#insecure"),
        Some((rest, _)) => (rest, "#***"),
        None => (rest, ""),
    };
    let Some((before, query)) = rest.split_once('?') else {
        shown.push_str(rest);
        shown.push_str(fragment);
        return shown;
    };
    shown.push_str(before);
    shown.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            shown.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if !harmless_parameter(name) => {
                shown.push_str(name);
                shown.push_str("=***");
            }
            Some(_) => shown.push_str(pair),
            // A bare value may be a key too.
            None if !pair.is_empty() => shown.push_str("***"),
            None => {}
        }
    }
    shown.push_str(fragment);
    shown
}

/// A query parameter whose value [`url_without_credentials`] shows.
fn harmless_parameter(name: &str) -> bool {
    ["db", "protocol"].iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether `url` is plain `http://` to a host other than this one (not
/// [`is_loopback_host`]): what a service warns about at start-up,
/// since keys, tokens or secrets sent or fetched there can be read or
/// changed in transit. Loopback is left alone: a test issuer, or a proxy
/// on the same host.
///
/// ```
/// use palisade_core::syntax::plain_http_elsewhere;
/// assert!(plain_http_elsewhere("http://idp.example/realms/shop"));
/// assert!(!plain_http_elsewhere("http://127.0.0.1:8080/realms/shop"));
/// assert!(!plain_http_elsewhere("https://idp.example/realms/shop"));
/// assert!(plain_http_elsewhere("HTTP://127.evil.example/realms/shop"));
/// assert!(plain_http_elsewhere("http://idp.example/realms/x@127.0.0.1"));
/// assert!(!plain_http_elsewhere("http://user@127.0.0.1/realms/shop"));
/// assert!(!plain_http_elsewhere("http://[0:0:0:0:0:0:0:1]:8080/realms/shop"));
/// assert!(plain_http_elsewhere("http://[::2]/realms/shop"));
/// ```
#[must_use]
pub fn plain_http_elsewhere(url: &str) -> bool {
    url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) && !is_loopback_url(url)
}

fn is_loopback_url(s: &str) -> bool {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    // The host a URL parser connects to: after the user information, which
    // ends at the authority's last `@` (an `@` in the path is not it).
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = &authority[authority.rfind('@').map_or(0, |at| at + 1)..];
    let host = match host_port.find(']') {
        Some(end) if host_port.starts_with('[') => &host_port[..=end],
        _ => host_port.split(':').next().unwrap_or(""),
    };
    is_loopback_host(host)
}

/// Whether `host`, as a URI names it, is this machine: `localhost` or a
/// loopback address (`127.x`, or `::1` in any spelling, in brackets or
/// not), in any case, with or without a trailing dot. What Palisade does not
/// warn about when something is sent there over plain `http`.
///
/// ```
/// use palisade_core::syntax::is_loopback_host;
/// assert!(is_loopback_host("LocalHost."));
/// assert!(is_loopback_host("127.0.0.2"));
/// assert!(is_loopback_host("[0:0:0:0:0:0:0:1]"));
/// assert!(!is_loopback_host("127.evil.example"));
/// assert!(!is_loopback_host("[::2]"));
/// ```
#[must_use]
pub fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `text` as HTML text or an attribute value in quotes: `&`, `<`, `>`,
/// `"` and `'` escaped. What Palisade's pages (a logout confirmation, a
/// problem page) show of a path or a name goes through it.
///
/// ```
/// use palisade_core::syntax::html_escape;
/// assert_eq!(html_escape(r#"<a href="x">O'Neil & co</a>"#), "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;");
/// assert_eq!(html_escape("café"), "café");
/// ```
#[must_use]
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JWT NumericDate (RFC 7519 §2: seconds since the epoch, perhaps with
/// a fraction) in whole seconds; `None` before the epoch or for what is no
/// number of seconds. Far-future dates saturate (and are refused as such).
///
/// ```
/// use palisade_core::syntax::numeric_date;
/// let n = |v: serde_json::Value| v.as_number().and_then(numeric_date);
/// assert_eq!(n(serde_json::json!(1_700_000_000)), Some(1_700_000_000));
/// assert_eq!(n(serde_json::json!(1_700_000_000.9)), Some(1_700_000_000));
/// assert_eq!(n(serde_json::json!(-1.5)), None);
/// ```
#[must_use]
pub fn numeric_date(n: &serde_json::Number) -> Option<u64> {
    if let Some(seconds) = n.as_u64() {
        return Some(seconds);
    }
    // `as` saturates and truncates: whole seconds.
    n.as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f as u64)
}

/// Reads a token endpoint's `expires_in` (RFC 6749 §5.1: seconds, a JSON
/// number) for `#[serde(default, deserialize_with = "…")]`: a number, or a
/// string holding one, as some issuers send it (`"3600"`: Azure AD's v1
/// endpoint, older ADFS); `null` is none. Anything else is an error, as
/// before, so a garbled answer is still refused.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Answer {
///     #[serde(default, deserialize_with = "palisade_core::syntax::deserialize_expires_in")]
///     expires_in: Option<f64>,
/// }
/// let read = |json: &str| serde_json::from_str::<Answer>(json).map(|a| a.expires_in);
/// assert_eq!(read(r#"{"expires_in": 300}"#).unwrap(), Some(300.0));
/// assert_eq!(read(r#"{"expires_in": "3600"}"#).unwrap(), Some(3600.0));
/// assert_eq!(read(r#"{}"#).unwrap(), None);
/// assert!(read(r#"{"expires_in": "soon"}"#).is_err());
/// assert!(read(r#"{"expires_in": [1]}"#).is_err());
/// ```
///
/// # Errors
/// A value that is neither a number nor a string of one.
pub fn deserialize_expires_in<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error as _;
    // Through a JSON value, not an untagged enum: an untagged enum buffers
    // numbers, which fails under serde_json's `arbitrary_precision`.
    let refused = || D::Error::custom("expires_in is not a number of seconds");
    match <serde_json::Value as serde::Deserialize>::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n.as_f64().map(Some).ok_or_else(refused),
        serde_json::Value::String(s) => s.trim().parse().map(Some).map_err(|_| refused()),
        _ => Err(refused()),
    }
}

/// Whether `name` is a DNS label as Kubernetes names namespaces (RFC 1123):
/// 1 to 63 lower-case letters, digits and `-`, starting and ending with a
/// letter or digit.
///
/// ```
/// use palisade_core::syntax::is_dns_label;
/// assert!(is_dns_label("istio-system") && is_dns_label("ns1"));
/// assert!(!is_dns_label("Default") && !is_dns_label("-a") && !is_dns_label("a_b") && !is_dns_label(""));
/// ```
#[must_use]
pub fn is_dns_label(name: &str) -> bool {
    let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| ok(&b) || b == b'-')
        && name.as_bytes().first().is_some_and(ok)
        && name.as_bytes().last().is_some_and(ok)
}

/// A secret's or a key's file name as an error may show it: the name as
/// given when it looks like a file's path (a `/` in it and its directory
/// there, or written from the root or `./` through two directories in
/// the characters file names use; or no `/` and a file of that name
/// here), else its length only. A secret pasted where its
/// file's path goes (a template's `clientSecretFile: {{ secret }}`) is
/// not echoed into the log, the `palisade check` output or a CI log.
///
/// ```
/// use palisade_core::syntax::file_as_shown as shown;
/// assert_eq!(shown("/tmp/client.secret"), "`/tmp/client.secret`");
/// assert_eq!(shown("Cargo.toml"), "`Cargo.toml`");
/// assert_eq!(
///     shown("Sup3rS3cret.2024"),
///     "the file the field names (not shown, in case it is the secret itself: 16 characters, no `/` and no such file here)"
/// );
/// assert_eq!(shown("/run/secrets/client"), "`/run/secrets/client`");
/// assert!(!shown("/no/such/dir/q3Zk+sec=").contains("q3Z"));
/// assert!(!shown("q3Zk/sec+Ab").contains("q3Z"));
/// ```
#[must_use]
pub fn file_as_shown(file: &str) -> String {
    let path = std::path::Path::new(file);
    let looks_like_a_path = if file.contains('/') {
        // Base64 has `/` too: its directory there, or written as paths
        // are (from the root or here, in two directories at least, of the
        // characters file names use), as on a host where the file is not.
        let written_as_one = ["/", "./", "../", "~/"].iter().any(|p| file.starts_with(p))
            && file.matches('/').count() >= 2
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        written_as_one
            || path
                .parent()
                .is_some_and(|d| !d.as_os_str().is_empty() && d.is_dir())
    } else {
        // A name alone: a file here (unreadable, or empty), else not
        // shown (`Summer.2024` may be a password).
        path.exists()
    };
    let count = file.chars().count();
    if file.contains(['\n', '\r']) {
        format!(
            "the file the field names (not shown, in case it is the secret itself: {count} characters over several lines)"
        )
    } else if looks_like_a_path {
        format!("`{file}`")
    } else if file.contains('/') {
        format!(
            "the file the field names (not shown, in case it is the secret itself: {count} characters, in a directory that does not exist)"
        )
    } else {
        format!(
            "the file the field names (not shown, in case it is the secret itself: {count} characters, no `/` and no such file here)"
        )
    }
}

/// The length of the key a key file holds: an AES-256 key.
pub const KEY_FILE_LEN: usize = 32;

/// How a key file (a sign-in's `session.keys`, SPNEGO's
/// `sessionCookie.keys`) holds its key, read by the one rule both follow:
/// 32 raw bytes, or text of 64 hex digits or base64 (standard or URL-safe,
/// padded or not) with white space around it. Its `Debug` shows the
/// decoded key's length, never the key.
#[derive(PartialEq, Eq)]
pub enum KeyFile {
    /// 32 raw bytes, the key itself. `printable` when every byte is a
    /// printable character: random bytes almost never are, so it is more
    /// likely a typed or generated string, as strong as the string is
    /// (worth a warning).
    Raw {
        /// Every byte a printable ASCII character.
        printable: bool,
    },
    /// Text: the bytes it decodes to ([`key_text`]), of whatever length,
    /// or `None` when it is neither hex nor base64. A 32-byte file of
    /// printable text with white space in it (a pass phrase, a line and
    /// its end) is text, not a raw key.
    Text(Option<Vec<u8>>),
    /// Bytes that are not text, and not 32 of them: their length.
    Binary(usize),
}

/// The key's length, not the key.
impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFile::Raw { printable } => f.debug_struct("Raw").field("printable", printable).finish(),
            KeyFile::Text(key) => f
                .debug_tuple("Text")
                .field(&key.as_ref().map(|k| format!("{} bytes", k.len())))
                .finish(),
            KeyFile::Binary(len) => f.debug_tuple("Binary").field(len).finish(),
        }
    }
}

/// How `content`, a key file's, holds its key; see [`KeyFile`].
#[must_use]
pub fn key_file(content: &[u8]) -> KeyFile {
    let printable = content.iter().all(u8::is_ascii_graphic);
    let text_like = content
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if content.len() == KEY_FILE_LEN && (printable || !text_like) {
        return KeyFile::Raw { printable };
    }
    match std::str::from_utf8(content) {
        Ok(text) => KeyFile::Text(key_text(text)),
        Err(_) => KeyFile::Binary(content.len()),
    }
}

/// The bytes a key's text stands for: 64 hex digits, or base64 (standard
/// or URL-safe alphabet, padded or not), white space around it ignored;
/// `None` when it is neither. The length is the caller's to check.
#[must_use]
pub fn key_text(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    if text.len() == 2 * KEY_FILE_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect();
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// What a key file of 32 printable characters is warned with
/// ([`KeyFile::Raw`]), after the file's name.
pub const PRINTABLE_KEY_WARNING: &str = "holds 32 printable characters, taken as the key's raw bytes: as strong as the string is (random bytes: `openssl rand 32`, or `openssl rand -hex 32` for text)";

#[cfg(test)]
mod tests {
    use super::url_without_credentials as shown;

    /// One rule for every key file: 32 bytes raw (printable ones said),
    /// hex or base64 text with white space around it, and 32 bytes of
    /// text with white space read as text (a pass phrase, refused).
    #[test]
    fn key_files_hold_raw_bytes_hex_or_base64() {
        use super::{KeyFile, key_file};
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(key_file(&key), KeyFile::Raw { printable: false });
        assert_eq!(
            key_file(b"0123456789abcdef0123456789abcdef"),
            KeyFile::Raw { printable: true }
        );
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            key_file(format!("{hex}\n").as_bytes()),
            KeyFile::Text(Some(key.clone()))
        );
        assert_eq!(
            key_file(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n"),
            KeyFile::Text(Some(key.clone()))
        );
        assert_eq!(
            key_file(b"correct horse battery staple 12\n"),
            KeyFile::Text(None)
        );
        assert_eq!(key_file(&[0xff; 31]), KeyFile::Binary(31));
        // Base64 of another length: text, its length the caller's to check.
        assert_eq!(key_file(b"AAEC"), KeyFile::Text(Some(vec![0, 1, 2])));
        // Its Debug shows the key's length, not the key.
        let shown = format!("{:?}", key_file(b"c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3ODkwMTI="));
        assert_eq!(shown, r#"Text(Some("29 bytes"))"#);
    }

    #[test]
    fn no_password_is_ever_shown() {
        for (url, want) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://app:s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://s3cret@h", "redis://***@h"),
            // What a URL parser refuses: the password's `/`, `?`, `#`, `@`.
            ("redis://:pa/s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://:p?s3cret@h", "redis://***"),
            ("redis://:p#s3cret@h/0", "redis://***"),
            ("redis://:p@s3cret@h/0", "redis://***@h/0"),
            // A `@` in a query value or a fragment: nothing after it shown.
            ("redis://h/0?x=a@s3cret", "redis://***"),
            (
                "redis+unix:///run/redis.sock?pass=Tr0ub@s3cret",
                "redis+unix://***",
            ),
            ("https://k.example/j?k=1#a@s3cret", "https://***"),
            // A `@` in the path hides more than it needs to.
            ("https://h/a@b/c", "https://***@b/c"),
            ("redis+unix:///sock?pass=s3cret", "redis+unix:///sock?pass=***"),
            (
                "redis+unix:///sock?db=2&PASSWORD=s3cret&x",
                "redis+unix:///sock?db=2&PASSWORD=***&***",
            ),
            // Any value but Redis's harmless ones, and a fragment.
            (
                "https://k.example/j?sig=s3cret&Db=1#s3cret",
                "https://k.example/j?sig=***&Db=1#***",
            ),
            ("user:s3cret@host", "***@host"),
            ("", ""),
        ] {
            assert_eq!(shown(url), want, "{url}");
            assert!(!shown(url).contains("s3cret"), "{url}");
        }
    }
}
