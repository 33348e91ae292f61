//! Guardrail modes (operators, issue 16): a tenant's, on its page
//! (`POST /portal/operator/tenants/{name}/guardrails`), and a key's, on the key's page
//! (`GET /portal/operator/keys/{id}`, `POST .../guardrails`).
//!
//! Each form has one select per guardrail, drawn from the control plane's table
//! ([`fairgate_control::guardrails::FIELDS`]), with "inherit" for none; the change goes
//! through `fairgate_control::guardrails` (checked there, stored, live, one audit entry with the
//! modes before and after). Pages show each scope's own modes and the effective ones per model,
//! with where each comes from: key → tenant → model → gateway.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, Response};
use fairgate_control::guardrails::{self as control, FIELDS};
use fairgate_control::ControlError;
use fairgate_types::GuardrailPolicy;

use super::guardrail_view::{key_html, load_key};
use super::tenants::{finish, load_tenant, Place};
use super::{Fail, Submitted};
use crate::session::{CsrfForm, Operator};
use crate::{PortalState, Refusal};

/// The form's values as a policy: `current` with each field of the table set from its select
/// (empty or `inherit`: none; a field the form does not carry keeps its mode). Only the names
/// of modes are checked here; which modes a field may take is the control plane's rule.
fn parse(f: &Submitted, current: &GuardrailPolicy) -> Result<GuardrailPolicy, Fail> {
    let mut p = *current;
    for field in FIELDS.iter().filter(|field| f.has(field.name)) {
        let raw = f.get(field.name);
        let mode = match raw {
            "" | "inherit" => None,
            name => Some(control::parse_mode(name).ok_or_else(|| {
                Fail::Invalid(format!(
                    "{}: `{name}` is not a mode; choose inherit, {}",
                    field.label,
                    field.modes_text()
                ))
            })?),
        };
        p = field.set(&p, mode);
    }
    Ok(p)
}

/// The control plane names a field by its admin API path (`policy.guardrails.injection`); the
/// form by its label.
fn form_message(msg: &str) -> String {
    FIELDS.iter().fold(msg.to_owned(), |m, f| {
        m.replace(&format!("policy.guardrails.{}", f.name), f.label)
    })
}

fn control_fail(e: ControlError) -> Fail {
    match Fail::from(e) {
        Fail::Invalid(m) => Fail::Invalid(form_message(&m)),
        other => other,
    }
}

/// `POST /portal/operator/tenants/{name}/guardrails`.
pub(crate) async fn set_tenant_guardrails(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let t = load_tenant(&st, &name).await?;
    let outcome = async {
        let modes = parse(&f, &t.policy.guardrails)?;
        control::set_tenant_guardrails(&st, &s.user().email, &name, modes)
            .await
            .map_err(control_fail)?;
        Ok(())
    }
    .await;
    finish(
        &st,
        &s,
        Place::Tenant(name.clone()),
        ("guardrails", &name),
        f,
        outcome,
    )
    .await
}

/// `GET /portal/operator/keys/{id}`.
pub(crate) async fn key_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let k = load_key(&st, &id).await?;
    Ok(Html(key_html(&st, &s, &k, None).await?))
}

/// `POST /portal/operator/keys/{id}/guardrails`.
pub(crate) async fn set_key_guardrails(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let k = load_key(&st, &id).await?;
    let outcome = async {
        let modes = parse(&f, &k.policy.guardrails)?;
        control::set_key_guardrails(&st, &s.user().email, k.id.as_str(), modes)
            .await
            .map_err(control_fail)?;
        Ok(())
    }
    .await;
    finish(
        &st,
        &s,
        Place::Key(id.clone()),
        ("guardrails", &id),
        f,
        outcome,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::modes_text;
    use crate::session::FormData;
    use fairgate_control::guardrails::GuardField;
    use fairgate_types::GuardMode;

    fn submitted(pairs: &[(&str, &str)]) -> Submitted {
        Submitted::from_pairs(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        )
    }

    fn field(name: &str) -> &'static GuardField {
        FIELDS.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn the_form_reads_one_select_per_guardrail() {
        let current = field("pii").set(&GuardrailPolicy::default(), Some(GuardMode::Log));
        let p = parse(&submitted(&[("pii", "block"), ("injection", "")]), &current)
            .unwrap_or_else(|_| panic!("parsed"));
        assert_eq!(field("pii").get(&p), Some(GuardMode::Block));
        assert_eq!(field("injection").get(&p), None);
        // "inherit": none; a field the form does not carry keeps its mode.
        let p = parse(&submitted(&[("pii", "inherit")]), &current).unwrap_or_else(|_| panic!());
        assert_eq!(p, GuardrailPolicy::default());
        let p = parse(&submitted(&[("injection", "log")]), &current).unwrap_or_else(|_| panic!());
        assert_eq!(field("pii").get(&p), Some(GuardMode::Log));
        assert_eq!(field("injection").get(&p), Some(GuardMode::Log));
        match parse(&submitted(&[("pii", "sometimes")]), &current) {
            Err(Fail::Invalid(m)) => assert!(m.contains("`sometimes` is not a mode"), "{m}"),
            _ => panic!("accepted"),
        }
        assert!(
            modes_text(&current).starts_with("pii log, injection inherit"),
            "{}",
            modes_text(&current)
        );
    }

    #[test]
    fn control_messages_name_the_form_field() {
        let injection = field("injection");
        let p = injection.set(&GuardrailPolicy::default(), Some(GuardMode::Redact));
        let m = form_message(&control::check(&p).unwrap_err().to_string());
        assert!(m.starts_with(injection.label), "{m}");
        assert!(!m.contains("policy."), "{m}");
    }
}
