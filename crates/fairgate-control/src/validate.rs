//! The rules every surface applies to what an administrator sends: names, weights, policies,
//! budgets, models, emails. One copy, so the admin API and the portal cannot disagree.

use fairgate_gateway::state::AppState;
use fairgate_types::{
    is_valid_name, Budget, KeyPolicy, RateLimits, TenantPolicy, Weight, NAME_RULE,
};

use crate::ControlError;

/// The one name rule ([`fairgate_types::is_valid_name`]) for a name of `kind` ("tenant name",
/// "group", "user").
pub fn valid_name(kind: &str, name: &str) -> Result<(), ControlError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "{kind} `{name}` is invalid: {NAME_RULE}"
        )))
    }
}

/// A weight within [`Weight`]'s bounds.
pub fn valid_weight(w: u32) -> Result<u32, ControlError> {
    Weight::new(w)
        .map(Weight::get)
        .map_err(ControlError::Invalid)
}

/// Longest admission wait a policy may ask for: one hour.
pub const MAX_WAIT_MS: u64 = 3_600_000;

pub use crate::error::bad;

pub fn check_limits(field: &str, l: &RateLimits) -> Result<(), ControlError> {
    let checks = [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("max_concurrent", l.max_concurrent.map(u64::from)),
    ];
    for (name, v) in checks {
        if v == Some(0) {
            return Err(bad(
                &format!("{field}.{name}"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    Ok(())
}

pub fn check_budgets(field: &str, budgets: &[Budget]) -> Result<(), ControlError> {
    for (i, b) in budgets.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if b.tokens.is_none() && b.cost.is_none() {
            return Err(bad(&at, "set `tokens` or `cost` (or both)"));
        }
        if b.tokens == Some(0) {
            return Err(bad(&format!("{at}.tokens"), "must be at least 1"));
        }
        if b.cost.is_some_and(|c| c.0 == 0) {
            return Err(bad(&format!("{at}.cost"), "must be at least 1 micro"));
        }
        if budgets[..i].iter().any(|o| o.period == b.period) {
            // Accounts are kept per scope and period, so a second line would share the first's.
            return Err(bad(
                &format!("{at}.period"),
                format!(
                    "a `{}` budget is already set; put both caps in one budget",
                    b.period.as_str()
                ),
            ));
        }
    }
    Ok(())
}

pub fn check_tenant_policy(p: &TenantPolicy) -> Result<(), ControlError> {
    check_limits("policy.limits", &p.limits)?;
    check_budgets("policy.budgets", &p.budgets)?;
    if p.max_queue == Some(0) {
        return Err(bad("policy.max_queue", "must be at least 1"));
    }
    if let Some(w) = p.max_wait_ms {
        if w > MAX_WAIT_MS {
            return Err(bad(
                "policy.max_wait_ms",
                format!("must be at most {MAX_WAIT_MS} (one hour), got {w}"),
            ));
        }
    }
    check_guardrails(&p.guardrails)?;
    check_mcp(&p.mcp)
}

/// Longest tool name an MCP allowlist may hold.
pub const MAX_TOOL_NAME: usize = 128;

/// A tenant's MCP allowlist: server names follow the name rule, each lists at least one tool
/// (or `*`), tool names are short, printable and listed once.
pub fn check_mcp(
    mcp: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<(), ControlError> {
    for (server, tools) in mcp {
        let at = format!("policy.mcp.{server}");
        if !is_valid_name(server) {
            return Err(bad(
                "policy.mcp",
                format!("server `{server}` is invalid: {NAME_RULE}"),
            ));
        }
        if tools.is_empty() {
            return Err(bad(
                &at,
                "list the tools this tenant may call, or [\"*\"] for all of them (leave the server out to refuse it)",
            ));
        }
        for (i, tool) in tools.iter().enumerate() {
            if tool.is_empty()
                || tool.len() > MAX_TOOL_NAME
                || tool.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(
                    &format!("{at}[{i}]"),
                    format!(
                        "`{tool}` is not a tool name (1-{MAX_TOOL_NAME} characters, no spaces)"
                    ),
                ));
            }
            if tools[..i].contains(tool) {
                return Err(bad(
                    &format!("{at}[{i}]"),
                    format!("`{tool}` is listed twice"),
                ));
            }
        }
    }
    Ok(())
}

pub fn check_key_policy(p: &KeyPolicy) -> Result<(), ControlError> {
    check_limits("policy.limits", &p.limits)?;
    check_budgets("policy.budgets", &p.budgets)?;
    check_guardrails(&p.guardrails)?;
    match &p.mcp {
        Some(m) => check_mcp(m),
        None => Ok(()),
    }
}

/// A scope's guardrail modes: the gateway's rules and each field's allowed modes
/// ([`crate::guardrails::check`]).
pub fn check_guardrails(g: &fairgate_types::GuardrailPolicy) -> Result<(), ControlError> {
    crate::guardrails::check(g)
}

pub fn check_models(st: &AppState, models: &Option<Vec<String>>) -> Result<(), ControlError> {
    if let Some(ms) = models {
        for m in ms {
            if st.upstreams.get(m).is_none() {
                return Err(ControlError::Invalid(format!(
                    "model `{m}` is not served by this gateway"
                )));
            }
        }
    }
    Ok(())
}

pub fn valid_email(email: &str) -> Result<String, ControlError> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(ControlError::Invalid(format!(
            "email: `{email}` is not an email address"
        )))
    }
}

#[cfg(test)]
mod mcp_tests {
    use super::*;
    use std::collections::BTreeMap;

    fn policy(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(s, t)| (s.to_string(), t.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn mcp_allowlists_are_checked() {
        assert!(check_mcp(&policy(&[("files", &["add", "echo"]), ("web", &["*"])])).is_ok());
        for (bad_policy, field) in [
            (policy(&[("bad name", &["add"])]), "policy.mcp"),
            (policy(&[("files", &[])]), "policy.mcp.files"),
            (policy(&[("files", &["a b"])]), "policy.mcp.files[0]"),
            (policy(&[("files", &[""])]), "policy.mcp.files[0]"),
            (policy(&[("files", &["add", "add"])]), "policy.mcp.files[1]"),
        ] {
            let e = check_mcp(&bad_policy).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let p = TenantPolicy {
            mcp: policy(&[("files", &[])]),
            ..TenantPolicy::default()
        };
        assert!(check_tenant_policy(&p).is_err());
    }
}
