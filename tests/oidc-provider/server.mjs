// panva's oidc-provider on loopback for Palisade's interop tests.
//
// Environment:
//   PORT       (required) listen on 127.0.0.1:PORT
//   ISSUER     default http://127.0.0.1:PORT
//   KEYS_FILE  JSON {"keys":[private JWKs]}; the first key signs, the others
//              stay published (restart with a new first key to rotate). If the
//              file is missing, one RS256 key is generated and written there.
//   AUDIENCE   default api://palisade-test: `aud` of the JWT access tokens
//
// Client `palisade-test` / `palisade-secret` may use the client_credentials
// grant; access tokens are JWTs (resource indicators, accessTokenFormat jwt).
// Plain http on loopback is fine for oidc-provider's token endpoint; only
// end-user interactions would need secure cookies, which are not used here.
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

const provider = new Provider(issuer, {
  jwks,
  clients: [{
    client_id: 'palisade-test',
    client_secret: 'palisade-secret',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
    scope: 'read write',
  }],
  scopes: ['read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
