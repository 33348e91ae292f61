// A real OpenID provider (panva/oidc-provider) for fairgate's OIDC sign-in test.
// Listens on 127.0.0.1 (PORT, default a free one), prints `READY <issuer>` once serving.
// One static confidential client and one account; the login interaction signs the fixed
// account in at once, and consent is granted automatically (a first-party client), so a
// plain HTTP client can drive the whole authorization-code flow.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const env = (k, d) => process.env[k] ?? d;
const CLIENT_ID = env('CLIENT_ID', 'fairgate');
const CLIENT_SECRET = env('CLIENT_SECRET', 'fairgate-test-secret-0123456789abcdef');
const REDIRECT_URI = env('REDIRECT_URI', 'http://127.0.0.1:8080/portal/oidc/callback');
const ACCOUNT_ID = env('ACCOUNT_ID', 'acct-1');
const ACCOUNT_EMAIL = env('ACCOUNT_EMAIL', 'sso.user@example.org');
const GROUPS = env('GROUPS', 'staff,lab').split(',').filter(Boolean);
// `true` (default), `false`, or `omit` (an IdP that never says whether it checked the address).
const EMAIL_VERIFIED = env('EMAIL_VERIFIED', 'true');

const key = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
key.kid = 'test-' + crypto.randomBytes(4).toString('hex');
key.use = 'sig';
key.alg = 'RS256';

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(env('PORT', '0')), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [key] },
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    if (id !== ACCOUNT_ID) return undefined;
    return {
      accountId: id,
      async claims() {
        const claims = { sub: id, email: ACCOUNT_EMAIL, name: 'SSO User', groups: GROUPS };
        if (EMAIL_VERIFIED !== 'omit') claims.email_verified = EMAIL_VERIFIED === 'true';
        return claims;
      },
    };
  },
  async loadExistingGrant(ctx) {
    const existing = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (existing) return ctx.oidc.provider.Grant.find(existing);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

const callback = provider.callback();
server.on('request', async (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    try {
      const details = await provider.interactionDetails(req, res);
      const result = details.prompt.name === 'login'
        ? { login: { accountId: ACCOUNT_ID } }
        : {};
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
    } catch (e) {
      res.statusCode = 400;
      res.end(String(e));
    }
    return;
  }
  callback(req, res);
});

process.stdout.write(`READY ${issuer}\n`);
// Exit with the test process: it closes our stdin.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
