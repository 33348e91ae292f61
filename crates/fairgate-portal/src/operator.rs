//! Operator pages: the live fair-share view ([`fair_share`]), tenants ([`tenants`]) and groups
//! ([`groups`]): create, weight, group membership, rate limits, queueing, budgets; tenants' and
//! keys' guardrail modes ([`guardrails`], shown by [`guardrail_view`]); models' backends ([`backends`]); the audit log
//! ([`audit`]). Every handler takes an
//! [`Operator`](crate::session::Operator), and every change a checked [`CsrfForm`](crate::session::CsrfForm).
//!
//! Every change goes the admin API's way: the same validation functions (`crate::admin`),
//! the store, `directory_changed` so the scheduler, limits and budgets use the new values at
//! the next request, and an audit entry with before and after. A form that does not validate
//! comes back as a 400 page showing the message and what was typed; nothing is changed. This
//! file holds what the forms share: the submitted values, why a change failed, and how a
//! refused form shows what was typed.

use std::str::FromStr;

use fairgate_control::validate::valid_weight;
use fairgate_control::ControlError;
use fairgate_gateway::error::ApiError;

use crate::html::esc;
use crate::reports::urlencode;
use crate::session::FormData;
use crate::Refusal;

pub(crate) mod audit;
pub(crate) mod backends;
pub(crate) mod fair_share;
pub(crate) mod groups;
pub(crate) mod guardrail_view;
pub(crate) mod guardrails;
pub(crate) mod tenants;

// ---- forms --------------------------------------------------------------------------

/// A submitted form, decoded once and kept so a refused form can be shown again as typed.
pub(crate) struct Submitted(Vec<(String, String)>);

impl FormData for Submitted {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Submitted(pairs)
    }
}

impl Submitted {
    /// The field's value, trimmed; empty when absent.
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.trim())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

/// A refused form: which one, about which tenant or group (for the forms repeated per row),
/// why, and what was typed into it.
pub(crate) struct Rejected {
    form: &'static str,
    subject: String,
    message: String,
    values: Submitted,
}

/// Why a change did not happen: the operator's input (shown with the form, 400) or anything
/// else (a refusal page).
pub(crate) enum Fail {
    Invalid(String),
    Refused(Refusal),
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refused(r)
    }
}

impl From<fairgate_store::StoreError> for Fail {
    fn from(e: fairgate_store::StoreError) -> Self {
        match e {
            // A name taken meanwhile is the operator's to fix, not a server error.
            fairgate_store::StoreError::Conflict(_) => Fail::Invalid(e.to_string()),
            e => Fail::Refused(Refusal::from(e)),
        }
    }
}

/// The admin API's validation errors carry the message meant for people; anything else is
/// internal.
impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::AdminBadRequest(m) => Fail::Invalid(m),
            e @ (ApiError::AdminConflict(_) | ApiError::AdminNotFound(_)) => {
                Fail::Invalid(e.to_string())
            }
            e => Fail::Refused(Refusal::Internal(e.to_string())),
        }
    }
}

/// The control plane's refusals carry the message meant for people; anything else is internal.
impl From<ControlError> for Fail {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(m) => Fail::Invalid(m),
            e @ (ControlError::Conflict(_) | ControlError::NotFound(_)) => {
                Fail::Invalid(e.to_string())
            }
            ControlError::Store(e) => Fail::from(e),
            e @ ControlError::Internal(_) => Fail::Refused(Refusal::Internal(e.to_string())),
        }
    }
}

/// The value an input shows: what was typed when this form was refused, else `current`.
fn shown(rej: Option<&Rejected>, form: &str, field: &str, current: impl ToString) -> String {
    match rej {
        Some(r) if r.form == form => esc(r.values.get(field)),
        _ => esc(&current.to_string()),
    }
}

fn alert(rej: Option<&Rejected>) -> String {
    rej.map(|r| {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"form-error\">Not saved: {}</p>",
            esc(&r.message)
        )
    })
    .unwrap_or_default()
}

/// A whole number from a form field; empty means `None`.
fn opt_num<T: FromStr>(label: &str, raw: &str, empty: &str) -> Result<Option<T>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| format!("{label}: `{raw}` is not a whole number; leave it empty for {empty}"))
}

/// A weight from a form field, checked by the admin API's rule.
fn weight_field(raw: &str) -> Result<u32, Fail> {
    let w: u32 = raw
        .parse()
        .map_err(|_| Fail::Invalid(format!("weight: `{raw}` is not a whole number")))?;
    Ok(valid_weight(w)?)
}

/// A tenant's page in the operator's console.
fn tenant_url(name: &str) -> String {
    format!("/portal/operator/tenants/{}", urlencode(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_numbers_explain_themselves() {
        assert_eq!(opt_num::<u64>("rpm", "", "no limit"), Ok(None));
        assert_eq!(opt_num::<u64>("rpm", "60", "no limit"), Ok(Some(60)));
        assert_eq!(
            opt_num::<u64>("rpm", "-1", "no limit"),
            Err("rpm: `-1` is not a whole number; leave it empty for no limit".into())
        );
    }
}
