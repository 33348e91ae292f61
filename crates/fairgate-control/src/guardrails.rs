//! Guardrail policies (issue 16): what a tenant or a key does with each guardrail's findings.
//!
//! [`FIELDS`] is the one list of the guardrails a policy sets (its field name, a label for
//! people, the modes it may take): the portal's forms are drawn from it and [`check`] applies
//! it, so a new field of [`GuardrailPolicy`] is one line there. Fields are read and written by
//! their serde names, so nothing here names `pii` or `injection` in code.
//!
//! A change to a scope's modes is its own operation ([`set_tenant_guardrails`],
//! [`set_key_guardrails`]) with its own audit entry, `tenant.guardrails` or `key.guardrails`,
//! whose before and after are the scope's modes alone (`{"pii":"log"}` → `{"pii":"block"}`).
//! A tenant or key change through the admin API that changes only the modes is written the
//! same way ([`guardrails_only`]), so both surfaces leave the same entry.

use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_types::{GuardMode, GuardrailPolicy, KeyRecord, Tenant};
use serde_json::{Map, Value};

use crate::audit::{json_of, record_audit};
use crate::error::bad;
use crate::lookup::load_key;
use crate::ControlError;

use GuardMode::{Block, Log, Off, Redact};

/// One guardrail a policy sets.
#[derive(Clone, Copy, Debug)]
pub struct GuardField {
    /// Its field in [`GuardrailPolicy`] and in the admin API's `policy.guardrails` JSON.
    pub name: &'static str,
    /// What people read on a form.
    pub label: &'static str,
    /// The modes it may take (`None`, "inherit", always may).
    pub modes: &'static [GuardMode],
}

/// Every guardrail a policy sets, in the order forms show them: one line per field.
#[rustfmt::skip]
pub const FIELDS: &[GuardField] = &[
    GuardField { name: "pii", label: "PII (e-mail, phone, card, IBAN, SSN, IP, custom patterns)", modes: &[Off, Log, Redact, Block] },
    GuardField { name: "injection", label: "Prompt injection (user messages)", modes: &[Off, Log, Block] },
    GuardField { name: "output", label: "PII in completions (output)", modes: &[Off, Log, Block] },
    GuardField { name: "external", label: "External classifier (prompts)", modes: &[Off, Log, Block] },
];

/// Every mode there is, whatever a field allows.
pub const ALL_MODES: [GuardMode; 4] = [Off, Log, Redact, Block];

/// A mode by its name (`off`, `log`, `redact`, `block`).
pub fn parse_mode(s: &str) -> Option<GuardMode> {
    ALL_MODES.into_iter().find(|m| m.as_str() == s)
}

fn as_object(p: &GuardrailPolicy) -> Map<String, Value> {
    match serde_json::to_value(p) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

impl GuardField {
    /// This scope's own mode for the field; `None`: it inherits.
    pub fn get(&self, p: &GuardrailPolicy) -> Option<GuardMode> {
        as_object(p)
            .get(self.name)
            .and_then(|v| v.as_str())
            .and_then(parse_mode)
    }

    /// `p` with this field set to `mode` (`None`: inherit); the other fields as they were.
    pub fn set(&self, p: &GuardrailPolicy, mode: Option<GuardMode>) -> GuardrailPolicy {
        let mut m = as_object(p);
        match mode {
            Some(x) => m.insert(self.name.to_owned(), Value::String(x.as_str().to_owned())),
            None => m.remove(self.name),
        };
        // Every name in FIELDS is a field of the policy (tested), so this cannot fail.
        serde_json::from_value(Value::Object(m)).unwrap_or(*p)
    }

    /// "off, log or block".
    pub fn modes_text(&self) -> String {
        let names: Vec<&str> = self.modes.iter().map(|m| m.as_str()).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// The rules for one scope's modes: the gateway's (the same as for `[guardrails]` and
/// `[models.guardrails]` in the config file), then each field's allowed modes. Errors name the
/// field by its admin API path, `policy.guardrails.<field>`.
pub fn check(p: &GuardrailPolicy) -> Result<(), ControlError> {
    fairgate_gateway::config::validate_guardrails(p)
        .map_err(|(f, m)| bad(&format!("policy.guardrails.{f}"), m))?;
    for f in FIELDS {
        if let Some(m) = f.get(p) {
            if !f.modes.contains(&m) {
                return Err(bad(
                    &format!("policy.guardrails.{}", f.name),
                    format!(
                        "`{}` is not a mode here; use {}",
                        m.as_str(),
                        f.modes_text()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where a field's effective mode comes from, for pages: the first scope, in order, that sets
/// it; `None` when none does (the mode is then `off`).
pub fn effective<'a>(
    field: &GuardField,
    scopes: &[(&'a str, GuardrailPolicy)],
) -> (GuardMode, Option<&'a str>) {
    scopes
        .iter()
        .find_map(|(name, p)| field.get(p).map(|m| (m, Some(*name))))
        .unwrap_or((GuardMode::Off, None))
}

/// The audit entry of a change to one scope's modes.
async fn audit(
    st: &AppState,
    actor: &str,
    scope: &str,
    target: String,
    before: &GuardrailPolicy,
    after: &GuardrailPolicy,
) {
    record_audit(
        st,
        actor,
        &format!("{scope}.guardrails"),
        target,
        json_of(before),
        json_of(after),
    )
    .await;
    tracing::info!(scope, ?before, ?after, actor, "guardrail policy changed");
}

/// When `before` → `after` changed the guardrail modes and nothing else, the modes
/// (before, after): such a change is audited as `tenant.guardrails` / `key.guardrails`.
pub(crate) fn guardrails_only<T: Clone + PartialEq>(
    before: &T,
    after: &T,
    modes: impl Fn(&mut T) -> &mut GuardrailPolicy,
) -> Option<(GuardrailPolicy, GuardrailPolicy)> {
    let mut b = before.clone();
    let mut a = after.clone();
    let (mb, ma) = (*modes(&mut b), *modes(&mut a));
    *modes(&mut b) = ma;
    (mb != ma && b == a).then_some((mb, ma))
}

/// Writes the audit entry of a tenant change that changed only its guardrail modes; `false`
/// when the change was something else (the caller writes `tenant.update`).
pub(crate) async fn audit_tenant_if_only_modes(
    st: &AppState,
    actor: &str,
    before: &Tenant,
    after: &Tenant,
) -> bool {
    match guardrails_only(before, after, |t| &mut t.policy.guardrails) {
        Some((b, a)) => {
            audit(
                st,
                actor,
                "tenant",
                format!("tenant:{}", after.name),
                &b,
                &a,
            )
            .await;
            true
        }
        None => false,
    }
}

/// Like [`audit_tenant_if_only_modes`], for a key.
pub(crate) async fn audit_key_if_only_modes(
    st: &AppState,
    actor: &str,
    before: &KeyRecord,
    after: &KeyRecord,
) -> bool {
    match guardrails_only(before, after, |k| &mut k.policy.guardrails) {
        Some((b, a)) => {
            audit(st, actor, "key", format!("key:{}", after.id), &b, &a).await;
            true
        }
        None => false,
    }
}

/// Sets a tenant's guardrail modes (its other settings stay): checked, stored, live before
/// this returns, audited as `tenant.guardrails`. Setting the modes it has already changes
/// nothing and writes no entry.
pub async fn set_tenant_guardrails(
    st: &AppState,
    actor: &str,
    name: &str,
    modes: GuardrailPolicy,
) -> Result<Tenant, ControlError> {
    check(&modes)?;
    let not_found = || ControlError::NotFound(format!("tenant `{name}`"));
    let mut t = st.store.get_tenant(name).await?.ok_or_else(not_found)?;
    let before = t.policy.guardrails;
    if before == modes {
        return Ok(t);
    }
    t.policy.guardrails = modes;
    if !st.store.update_tenant(&t).await? {
        return Err(not_found());
    }
    directory_changed(st).await?;
    audit(
        st,
        actor,
        "tenant",
        format!("tenant:{name}"),
        &before,
        &modes,
    )
    .await;
    Ok(t)
}

/// Sets a key's guardrail modes (over its tenant's), like [`set_tenant_guardrails`]; audited
/// as `key.guardrails`.
pub async fn set_key_guardrails(
    st: &AppState,
    actor: &str,
    id: &str,
    modes: GuardrailPolicy,
) -> Result<KeyRecord, ControlError> {
    check(&modes)?;
    let mut k = load_key(st, id).await?;
    let before = k.policy.guardrails;
    if before == modes {
        return Ok(k);
    }
    k.policy.guardrails = modes;
    st.store.update_key(&k).await?;
    directory_changed(st).await?;
    audit(st, actor, "key", format!("key:{}", k.id), &before, &modes).await;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_field_of_the_policy() {
        for f in FIELDS {
            for &m in f.modes {
                let p = f.set(&GuardrailPolicy::default(), Some(m));
                assert_eq!(f.get(&p), Some(m), "{} = {}", f.name, m.as_str());
                assert_eq!(
                    serde_json::to_value(p).unwrap(),
                    serde_json::json!({ f.name: m.as_str() }),
                    "{} is not a field of GuardrailPolicy",
                    f.name
                );
                assert_eq!(f.set(&p, None), GuardrailPolicy::default());
                // The others keep their modes.
                for o in FIELDS.iter().filter(|o| o.name != f.name) {
                    assert_eq!(o.get(&p), None);
                }
            }
        }
    }

    #[test]
    fn the_table_and_the_checks_agree() {
        for f in FIELDS {
            for m in ALL_MODES {
                let p = f.set(&GuardrailPolicy::default(), Some(m));
                assert_eq!(
                    check(&p).is_ok(),
                    f.modes.contains(&m),
                    "{} = {}",
                    f.name,
                    m.as_str()
                );
            }
        }
        let injection = FIELDS.iter().find(|f| f.name == "injection").unwrap();
        let e = check(&injection.set(&GuardrailPolicy::default(), Some(Redact)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("policy.guardrails.injection: ") && e.contains("PII only"),
            "{e}"
        );
        assert_eq!(injection.modes_text(), "off, log or block");
    }

    #[test]
    fn the_first_scope_that_sets_a_mode_decides() {
        let pii = &FIELDS[0];
        let none = GuardrailPolicy::default();
        let log = pii.set(&none, Some(Log));
        let block = pii.set(&none, Some(Block));
        assert_eq!(
            effective(pii, &[("key", none), ("tenant", block), ("gateway", log)]),
            (Block, Some("tenant"))
        );
        assert_eq!(effective(pii, &[("key", none)]), (Off, None));
    }

    #[test]
    fn a_change_of_the_modes_alone_is_told_apart() {
        let pii = &FIELDS[0];
        let t = Tenant {
            name: "lab".into(),
            weight: 1,
            group: None,
            created_at: 0,
            policy: Default::default(),
        };
        let mut modes = t.clone();
        modes.policy.guardrails = pii.set(&modes.policy.guardrails, Some(Block));
        let got = guardrails_only(&t, &modes, |t| &mut t.policy.guardrails);
        assert_eq!(
            got,
            Some((GuardrailPolicy::default(), modes.policy.guardrails))
        );
        let mut both = modes.clone();
        both.weight = 2;
        assert_eq!(
            guardrails_only(&t, &both, |t| &mut t.policy.guardrails),
            None
        );
        assert_eq!(guardrails_only(&t, &t, |t| &mut t.policy.guardrails), None);
    }
}
