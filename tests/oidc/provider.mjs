// A real OpenID Connect provider (panva's oidc-provider, certified) on loopback for the single
// sign-on tests. Its login page takes any account name (with any password) and answers the
// claims below; it asks for consent. Usage:
//   node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI CODE_TTL_SECONDS
// It prints "ready <issuer>" once listening, and stops with its parent's stdin.
import Provider from "oidc-provider";

const [port, clientId, clientSecret, redirectUri, codeTtl] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

// Accounts named `ext-...` are outside partners: the claim says so.
const claimsOf = (id) => ({
  sub: id,
  preferred_username: id,
  name: `Agent ${id.toUpperCase()}`,
  diplomatie_kind: id.startsWith("ext-") ? "external" : "agent",
});

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ["authorization_code"],
    response_types: ["code"],
  }],
  claims: { openid: ["sub"], profile: ["preferred_username", "name", "diplomatie_kind"] },
  // The claims go in the ID token itself (the server reads them there).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: { AuthorizationCode: Number(codeTtl) },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => claimsOf(id) }),
  cookies: { keys: ["diplomatie-test-only"] },
});
// Plain HTTP on loopback: the provider must not insist on TLS.
provider.proxy = true;
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
provider.listen(Number(port), "127.0.0.1", () => console.log(`ready ${issuer}`));
