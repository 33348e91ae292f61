//! `[mcp]`: the MCP tool servers (streamable HTTP transport) tenants reach through the gateway
//! at `/mcp/{name}` ([`crate::mcp`]). Which tenant may use which server and tools is the
//! tenant's policy (`policy.mcp`); the servers themselves are the operator's, here.

use serde::Deserialize;

use super::Secret;

/// `[mcp]`: registered servers; none by default (then every `/mcp/...` is a 404).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub servers: Vec<McpServerConfig>,
}

/// `[[mcp.servers]]`: one MCP server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The name in `/mcp/{name}`, in tenants' `policy.mcp` and in the ledger (`mcp:{name}`).
    pub name: String,
    /// The server's MCP endpoint (`http://host:port/mcp`): POST, GET and DELETE go there.
    pub url: String,
    /// A bearer token the gateway sends to the server (the client's fairgate key never goes
    /// upstream). Prefer `api_key_env`. Never logged or serialized.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// ... or the environment variable that holds it (read when a request goes out).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// How long the server may take to send its answer's head.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a streamed answer (SSE) may stay silent before the gateway ends it.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    60_000
}

fn default_idle_timeout_ms() -> u64 {
    300_000
}

/// The characters a server name may use: it appears in a URL path, a metric label and the
/// ledger.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl McpConfig {
    pub fn server(&self, name: &str) -> Option<&McpServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// `Err((field, message))`, the field relative to `mcp`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = |f: &str| format!("servers[{i}].{f}");
            if !valid_server_name(&s.name) {
                return Err((
                    at("name"),
                    format!(
                        "`{}` is invalid: 1-64 characters from A-Z a-z 0-9 - _ .",
                        s.name
                    ),
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err((
                    at("name"),
                    format!("MCP server `{}` is declared twice", s.name),
                ));
            }
            validate_url(&s.url).map_err(|m| (at("url"), m))?;
            if s.timeout_ms == 0 {
                return Err((at("timeout_ms"), "must be at least 1".into()));
            }
            if s.idle_timeout_ms == 0 {
                return Err((at("idle_timeout_ms"), "must be at least 1".into()));
            }
            if let Some(k) = &s.api_key {
                if k.expose().is_empty() || k.expose().chars().any(char::is_whitespace) {
                    return Err((at("api_key"), "must be non-empty, without spaces".into()));
                }
            }
            s.resolve_api_key().map_err(|m| {
                (
                    at(if s.api_key_env.is_some() {
                        "api_key_env"
                    } else {
                        "api_key"
                    }),
                    m,
                )
            })?;
        }
        Ok(())
    }
}

impl McpServerConfig {
    /// The token to send upstream: `api_key`, or the variable `api_key_env` names (read now).
    pub fn resolve_api_key(&self) -> Result<Option<Secret>, String> {
        super::sections::key_from(&self.api_key, &self.api_key_env)
    }
}

/// An `http://` or `https://` URL with a host and no credentials; a path is expected (the
/// server's MCP endpoint).
fn validate_url(url: &str) -> Result<(), String> {
    super::sections::validate_http_url(url)?;
    if url.contains('#') {
        return Err(format!("`{url}` must not have a fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, url: &str) -> McpServerConfig {
        McpServerConfig {
            name: name.into(),
            url: url.into(),
            api_key: None,
            api_key_env: None,
            timeout_ms: 1,
            idle_timeout_ms: 1,
        }
    }

    #[test]
    fn names_and_urls_are_checked() {
        let ok = McpConfig {
            servers: vec![server("files", "http://127.0.0.1:9000/mcp")],
        };
        assert!(ok.validate().is_ok());
        for (s, field) in [
            (server("bad name", "http://h/mcp"), "servers[0].name"),
            (server("a/b", "http://h/mcp"), "servers[0].name"),
            (server("f", "ftp://h/mcp"), "servers[0].url"),
            (server("f", "http:///mcp"), "servers[0].url"),
            (server("f", "http://u:p@h/mcp"), "servers[0].url"),
        ] {
            let c = McpConfig { servers: vec![s] };
            assert_eq!(c.validate().unwrap_err().0, field);
        }
        let twice = McpConfig {
            servers: vec![server("f", "http://h/mcp"), server("f", "http://h/mcp")],
        };
        assert!(twice.validate().unwrap_err().1.contains("twice"));
        let mut both = server("f", "http://h/mcp");
        both.api_key = Some(Secret::new("k"));
        both.api_key_env = Some("X".into());
        assert_eq!(
            McpConfig {
                servers: vec![both]
            }
            .validate()
            .unwrap_err()
            .0,
            "servers[0].api_key_env"
        );
    }
}
