//! `[portal.oidc]`: the OpenID provider the portal signs users in with. Only the settings live
//! here, with the rest of the config; the sign-in flow is the portal's.

use serde::Deserialize;

/// `[portal.oidc]`: sign-in with an OpenID provider.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; `{issuer}/.well-known/openid-configuration` is read.
    pub issuer: String,
    pub client_id: String,
    /// For confidential clients; `FAIRGATE_PORTAL__OIDC__CLIENT_SECRET` overrides.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The public URL of `/portal/oidc/callback`, as registered with the provider.
    pub redirect_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that holds the user's email address.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// A claim (string or list of strings) whose first value naming an existing tenant
    /// becomes the user's tenant at each sign-in.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// A claim (string or list) holding roles; with `tenant_claim`, searched for
    /// `operator_values`.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Values of `tenant_claim`/`roles_claim` that make the user an operator.
    #[serde(default)]
    pub operator_values: Vec<String>,
    /// Create a portal user (role `user`) on first sign-in when none matches.
    #[serde(default = "yes")]
    pub create_users: bool,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("user_claim", &self.user_claim)
            .field("tenant_claim", &self.tenant_claim)
            .field("roles_claim", &self.roles_claim)
            .field("operator_values", &self.operator_values)
            .field("create_users", &self.create_users)
            .finish()
    }
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_user_claim() -> String {
    "email".into()
}
fn yes() -> bool {
    true
}
