// panva's oidc-provider on loopback for Palisade's interop tests.
//
// Environment:
//   PORT       (required) listen on 127.0.0.1:PORT
//   ISSUER     default http://127.0.0.1:PORT
//   KEYS_FILE  JSON {"keys":[private JWKs]}; the first key signs, the others
//              stay published (restart with a new first key to rotate). If the
//              file is missing, one RS256 key is generated and written there.
//   AUDIENCE   default api://palisade-test: `aud` of the JWT access tokens
//   BROWSER_REDIRECT_URIS  opt-in browser sign-in (unset: off): space-separated
//              redirect URIs of the client `palisade-browser` /
//              `palisade-browser-secret` (authorization_code and refresh_token
//              grants, response type code, client_secret_basic; scopes openid,
//              offline_access, read, write),
//              oidc-provider's development login and consent pages
//              (devInteractions: any login and password sign in), and
//              revocation (RFC 7009); `GET /test/revocations` answers how
//              many refresh tokens the revocation endpoint ended.
//   BROWSER_CLIENT  JSON client metadata merged over that client's, e.g.
//              {"post_logout_redirect_uris":["http://127.0.0.1:8080/"]}
//   BROWSER_BACKCHANNEL_LOGOUT  opt-in (unset: off): `1` turns on
//              back-channel logout (features.backchannelLogout), so that a
//              client with a `backchannel_logout_uri` in BROWSER_CLIENT is
//              sent a logout token when its user logs out at the provider
//              (to loopback too: the SSRF protection of outgoing requests is
//              off); each delivery is logged on stdout
//   BROWSER_OPAQUE_ACCESS_TOKENS  opt-in (unset: off): `1` gives the browser
//              client no default resource indicator, so the access tokens
//              of its sign-ins are oidc-provider's opaque ones (for
//              userinfo) rather than JWTs for AUDIENCE: a relying party
//              then knows the user from the ID token alone
//   BROWSER_SESSION_REFRESH_TOKENS  opt-in (unset: off): `1` issues the
//              browser client a refresh token with every authorization code,
//              bound to the user's session at the provider (it ends when
//              that session ends) and rotated at every use, as Keycloak's
//              are with "Revoke Refresh Token" on (oidc-provider's defaults
//              issue them for offline_access only, which needs
//              prompt=consent); `GET /test/refreshes` answers how many
//              refresh_token grants succeeded and failed
//   ACCESS_TOKEN_TTL  seconds, default 300: the lifetime of the JWT access
//              tokens for AUDIENCE
//   INTROSPECTION  opt-in (unset: off): `1` turns on token introspection
//              (RFC 7662) and revocation (RFC 7009), registers the resource
//              server client `palisade-rs` / `palisade-rs-secret`
//              (client_secret_basic; it may introspect any token) and the
//              resource OPAQUE_AUDIENCE (default api://palisade-opaque),
//              whose access tokens are opaque; `GET /test/introspections`
//              answers how many introspection requests were received
//
// Client `palisade-test` / `palisade-secret` may use the client_credentials
// grant; access tokens are JWTs (resource indicators, accessTokenFormat jwt).
// Plain http on loopback is fine for oidc-provider: its interaction cookies
// are not `Secure` over http.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
if (!port) {
  console.error('PORT is required');
  process.exit(2);
}
const issuer = process.env.ISSUER || `http://127.0.0.1:${port}`;
const audience = process.env.AUDIENCE || 'api://palisade-test';

export function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

let jwks;
const keysFile = process.env.KEYS_FILE;
if (keysFile && existsSync(keysFile)) {
  jwks = JSON.parse(readFileSync(keysFile, 'utf8'));
} else {
  jwks = { keys: [newKey()] };
  if (keysFile) writeFileSync(keysFile, JSON.stringify(jwks));
}

const clients = [{
  client_id: 'palisade-test',
  client_secret: 'palisade-secret',
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  scope: 'read write',
}];
const browserRedirectUris = (process.env.BROWSER_REDIRECT_URIS || '').split(/\s+/).filter(Boolean);
const browser = browserRedirectUris.length > 0;
if (browser) {
  clients.push({
    client_id: 'palisade-browser',
    client_secret: 'palisade-browser-secret',
    grant_types: ['authorization_code', 'refresh_token'],
    redirect_uris: browserRedirectUris,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...JSON.parse(process.env.BROWSER_CLIENT || '{}'),
  });
}

const introspection = process.env.INTROSPECTION === '1';
const opaqueAudience = process.env.OPAQUE_AUDIENCE || 'api://palisade-opaque';
if (introspection) {
  clients.push({
    client_id: 'palisade-rs',
    client_secret: 'palisade-rs-secret',
    grant_types: [],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  });
}

const sessionRefreshTokens = process.env.BROWSER_SESSION_REFRESH_TOKENS === '1';
const accessTokenTTL = Number(process.env.ACCESS_TOKEN_TTL || 300);
const backchannelLogout = process.env.BROWSER_BACKCHANNEL_LOGOUT === '1';
const opaqueBrowserTokens = process.env.BROWSER_OPAQUE_ACCESS_TOKENS === '1';
const provider = new Provider(issuer, {
  jwks,
  clients,
  // oidc-provider refuses to send requests to special-use addresses
  // (loopback included) as SSRF protection; the back-channel logout
  // receivers of these tests are on loopback.
  ...(backchannelLogout && {
    fetch: (url, { dispatcher: _ssrfProtection, ...options }) => globalThis.fetch(url, options),
  }),
  ...(sessionRefreshTokens && {
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => true,
  }),
  // offline_access lets the browser client have refresh tokens.
  scopes: browser ? ['openid', 'offline_access', 'read', 'write'] : ['read', 'write'],
  features: {
    devInteractions: { enabled: browser },
    backchannelLogout: { enabled: backchannelLogout },
    clientCredentials: { enabled: true },
    introspection: { enabled: introspection },
    revocation: { enabled: introspection || browser },
    // DPoP-bound tokens for a client that sends a proof to /token (RFC 9449).
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, client) =>
        (opaqueBrowserTokens && client?.clientId === 'palisade-browser' ? undefined : audience),
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (introspection && resourceIndicator === opaqueAudience) {
          return { scope: 'read write', audience: opaqueAudience, accessTokenTTL: 300, accessTokenFormat: 'opaque' };
        }
        if (resourceIndicator !== audience) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

if (backchannelLogout) {
  provider.on('backchannel.success', (_ctx, client, sub, sid) => {
    console.log(`backchannel logout sent to ${client.clientId} (sub ${sub}, sid ${sid})`);
  });
  provider.on('backchannel.error', (_ctx, err, client) => {
    console.log(`backchannel logout to ${client.clientId} failed: ${err.message}`);
  });
}

if (sessionRefreshTokens) {
  const refreshes = { succeeded: 0, failed: 0 };
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === 'refresh_token') refreshes.succeeded += 1;
  });
  provider.on('grant.error', (ctx) => {
    if (ctx.oidc.params?.grant_type === 'refresh_token') refreshes.failed += 1;
  });
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/test/refreshes') {
      ctx.body = refreshes;
      return;
    }
    await next();
  });
}

if (browser) {
  // Destroyed by the revocation endpoint only: a rotation consumes the old
  // token, and the end of a session revokes its grant's tokens at once.
  const revocations = { refresh_tokens: 0 };
  provider.on('refresh_token.destroyed', () => {
    revocations.refresh_tokens += 1;
  });
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/test/revocations') {
      ctx.body = revocations;
      return;
    }
    await next();
  });
}

if (introspection) {
  let introspections = 0;
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/test/introspections') {
      ctx.body = { count: introspections };
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/token/introspection') introspections += 1;
    await next();
  });
}

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
