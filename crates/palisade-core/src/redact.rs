//! Showing configuration values that may hold a credential.

/// `url` as it may be shown in a log line, a `Debug` output or an error:
/// its user information (a user name, a password) replaced by `***`, and
/// the values of query parameters that name a password (`pass=`,
/// `password=`, as `redis+unix:///run/redis.sock?pass=…` carries one)
/// likewise.
///
/// It does not parse the URL, so it also hides what a URL parser would
/// refuse: everything between `://` and the last `@` counts as user
/// information, even a password with an unescaped `/`, `?`, `#` or `@` in
/// it. A `@` in the path or query hides more than it needs to, never less.
///
/// ```
/// use palisade_core::authn::url_without_credentials as shown;
/// assert_eq!(shown("redis://app:s3cret@redis.internal:6380/2"), "redis://***@redis.internal:6380/2");
/// assert_eq!(shown("rediss://:pa/ss#w@h/0"), "rediss://***@h/0");
/// assert_eq!(shown("redis+unix:///run/redis.sock?db=1&pass=s3cret"), "redis+unix:///run/redis.sock?db=1&pass=***");
/// assert_eq!(shown("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
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
        Some(at) => {
            shown.push_str("***@");
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some((before, query)) = rest.split_once('?') else {
        shown.push_str(rest);
        return shown;
    };
    shown.push_str(before);
    shown.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            shown.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if names_a_password(name) => {
                shown.push_str(name);
                shown.push_str("=***");
            }
            _ => shown.push_str(pair),
        }
    }
    shown
}

/// A query parameter's name that says its value is a password.
fn names_a_password(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("pass") || name.contains("secret") || name.contains("token")
}

#[cfg(test)]
mod tests {
    use super::url_without_credentials as shown;

    #[test]
    fn no_password_is_ever_shown() {
        for (url, want) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://app:s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://s3cret@h", "redis://***@h"),
            // What a URL parser refuses: the password's `/`, `?`, `#`, `@`.
            ("redis://:pa/s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://:p?s3cret@h", "redis://***@h"),
            ("redis://:p#s3cret@h/0", "redis://***@h/0"),
            ("redis://:p@s3cret@h/0", "redis://***@h/0"),
            // A `@` later on hides more than it needs to.
            ("redis://h/0?x=a@b", "redis://***@b"),
            ("redis+unix:///sock?pass=s3cret", "redis+unix:///sock?pass=***"),
            (
                "redis+unix:///sock?db=2&PASSWORD=s3cret&x",
                "redis+unix:///sock?db=2&PASSWORD=***&x",
            ),
            ("user:s3cret@host", "***@host"),
            ("", ""),
        ] {
            assert_eq!(shown(url), want, "{url}");
            assert!(!shown(url).contains("s3cret"), "{url}");
        }
    }
}
