//! Slurm through slurmrestd: over its unix socket (local auth: the socket's peer is the
//! user) or over HTTP with a JWT (`X-SLURM-USER-NAME`, `X-SLURM-USER-TOKEN`).
//!
//! The API version is discovered once from `GET /openapi/v3` (the newest of the versions this
//! client speaks that the server offers: v0.0.38 of Slurm 22.05 up to v0.0.44 of 25.11), and
//! the answers are read leniently, because the shapes moved between versions:
//! - submit: v0.0.38 puts `script` beside `job` and `environment` as an object; later versions
//!   put `script` inside `job` and `environment` as a list of `K=V`;
//! - `job_state` is a string up to v0.0.39 and a list of flags from v0.0.40;
//! - times are numbers up to v0.0.39 and `{"set": true, "number": N}` from v0.0.40.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::api::{JobInfo, JobState, Slurm, SlurmError, Submission};

/// The versions this client speaks, newest first.
pub const VERSIONS: &[&str] = &[
    "v0.0.44", "v0.0.43", "v0.0.42", "v0.0.41", "v0.0.40", "v0.0.39", "v0.0.38",
];

enum Target {
    Unix(PathBuf),
    Http {
        base: String,
        client: reqwest::Client,
        user: Option<String>,
        token_env: String,
    },
}

pub struct Rest {
    target: Target,
    version: OnceCell<&'static str>,
}

impl Rest {
    /// `unix:/path.sock` or `http(s)://host:port`.
    pub fn new(url: &str, user: Option<String>, token_env: String) -> Result<Rest, String> {
        let target = if let Some(p) = url.strip_prefix("unix:") {
            Target::Unix(PathBuf::from(p))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            Target::Http {
                base: url.trim_end_matches('/').to_owned(),
                client: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(30))
                    .build()
                    .map_err(|e| e.to_string())?,
                user,
                token_env,
            }
        } else {
            return Err(format!(
                "rest_url `{url}`: give unix:/path/to/socket or http(s)://host:port"
            ));
        };
        Ok(Rest {
            target,
            version: OnceCell::new(),
        })
    }

    /// One call; the answer's JSON (slurmrestd answers JSON even for errors).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SlurmError> {
        let (status, bytes) = match &self.target {
            Target::Unix(sock) => {
                let stream = tokio::net::UnixStream::connect(sock)
                    .await
                    .map_err(|e| SlurmError::Unreachable(format!("{}: {e}", sock.display())))?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| SlurmError::Unreachable(e.to_string()))?;
                tokio::spawn(conn);
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let mut req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, "localhost")
                    .header(http::header::ACCEPT, "application/json");
                if !body.is_empty() {
                    req = req.header(http::header::CONTENT_TYPE, "application/json");
                }
                let req = req
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| SlurmError::Protocol(e.to_string()))?;
                let resp = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    send.send_request(req),
                )
                .await
                .map_err(|_| SlurmError::Unreachable("slurmrestd did not answer in 30 s".into()))?
                .map_err(|e| SlurmError::Unreachable(e.to_string()))?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| SlurmError::Unreachable(e.to_string()))?
                    .to_bytes();
                (status, bytes)
            }
            Target::Http {
                base,
                client,
                user,
                token_env,
            } => {
                let mut req = client
                    .request(method, format!("{base}{path}"))
                    .header(http::header::ACCEPT, "application/json");
                if let Some(u) = user {
                    req = req.header("X-SLURM-USER-NAME", u);
                }
                // Read at every call: `scontrol token` tokens expire and are renewed outside.
                if let Ok(t) = std::env::var(token_env) {
                    req = req.header("X-SLURM-USER-TOKEN", t.trim());
                }
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| SlurmError::Unreachable(e.to_string()))?;
                let status = resp.status();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| SlurmError::Unreachable(e.to_string()))?;
                (status, bytes)
            }
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({"errors": [{"error": String::from_utf8_lossy(&bytes).trim().to_owned()}]}),
        );
        if let Some(msg) = errors_of(&v) {
            return Err(if status.is_server_error() && status != 500 {
                SlurmError::Unreachable(msg)
            } else {
                SlurmError::Refused(msg)
            });
        }
        if !status.is_success() {
            return Err(SlurmError::Refused(format!("HTTP {status}")));
        }
        Ok(v)
    }

    /// The API version to use, discovered once.
    async fn version(&self) -> Result<&'static str, SlurmError> {
        self.version
            .get_or_try_init(|| async {
                let spec = self.call(Method::GET, "/openapi/v3", None).await?;
                let paths = spec
                    .get("paths")
                    .and_then(Value::as_object)
                    .ok_or_else(|| SlurmError::Protocol("/openapi/v3 has no paths".into()))?;
                pick_version(paths.keys().map(String::as_str)).ok_or_else(|| {
                    SlurmError::Protocol(format!(
                        "slurmrestd offers none of the versions {VERSIONS:?} (load openapi/v0.0.38 or newer)"
                    ))
                })
            })
            .await
            .copied()
    }
}

/// The newest version of ours whose job-submit path the server lists.
pub fn pick_version<'a>(paths: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let paths: Vec<&str> = paths.collect();
    VERSIONS
        .iter()
        .find(|v| paths.iter().any(|p| *p == format!("/slurm/{v}/job/submit")))
        .copied()
}

/// Slurm's `errors` array as one message; `None` when there is none.
fn errors_of(v: &Value) -> Option<String> {
    let errs = v.get("errors")?.as_array()?;
    let msgs: Vec<String> = errs
        .iter()
        .filter_map(|e| {
            let desc = e.get("description").and_then(Value::as_str).unwrap_or("");
            let err = e.get("error").and_then(Value::as_str).unwrap_or("");
            let m = match (desc.is_empty(), err.is_empty()) {
                (false, false) => format!("{desc}: {err}"),
                (false, true) => desc.to_owned(),
                (true, false) => err.to_owned(),
                (true, true) => return None,
            };
            Some(m)
        })
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

/// The submit body for `version`.
pub fn submit_body(version: &str, job: &Submission) -> Value {
    let old = version <= "v0.0.39";
    let mut j = json!({
        "name": job.name,
        "time_limit": if old { json!(job.time_limit_min) } else { json!({"set": true, "number": job.time_limit_min}) },
        "nodes": if old { json!(job.nodes) } else { json!(job.nodes.to_string()) },
        "tasks_per_node": 1,
        "current_working_directory": job.workdir,
        "standard_output": job.output,
        "standard_error": job.output,
    });
    if old {
        j["environment"] = Value::Object(
            job.env
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        );
        j["gres"] = json!(format!("{}", job.gres));
    } else {
        j["environment"] = json!(job
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>());
        j["tres_per_node"] = json!(format!("gres/{}", job.gres));
    }
    for (k, v) in [
        ("partition", &job.partition),
        ("account", &job.account),
        ("qos", &job.qos),
    ] {
        if let Some(v) = v {
            j[k] = json!(v);
        }
    }
    if old {
        json!({"job": j, "script": job.script})
    } else {
        j["script"] = json!(job.script);
        json!({"job": j})
    }
}

/// A time field: a number, or `{"set": bool, "number": N}`.
fn time_of(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::Object(o)) if o.get("set").and_then(Value::as_bool) != Some(false) => {
            o.get("number").and_then(Value::as_i64).unwrap_or(0)
        }
        _ => 0,
    }
}

/// `job_state`: a string, or a list of flags whose first is the state.
fn state_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN")
            .to_owned(),
        _ => "UNKNOWN".into(),
    }
}

/// The jobs of a `GET .../jobs` answer whose names start with `prefix`.
pub fn parse_jobs(v: &Value, prefix: &str) -> Vec<JobInfo> {
    v.get("jobs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|j| {
            let name = j.get("name")?.as_str()?;
            if !name.starts_with(prefix) {
                return None;
            }
            let id = match j.get("job_id")? {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return None,
            };
            let slurm_state = state_of(j.get("job_state"));
            Some(JobInfo {
                id,
                name: name.to_owned(),
                state: JobState::from_slurm(&slurm_state),
                slurm_state,
                nodes: j
                    .get("nodes")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                start_time: time_of(j.get("start_time")),
                end_time: time_of(j.get("end_time")),
            })
        })
        .collect()
}

impl Slurm for Rest {
    fn submit<'a>(&'a self, job: &'a Submission) -> BoxFuture<'a, Result<String, SlurmError>> {
        Box::pin(async move {
            let v = self.version().await?;
            let ans = self
                .call(
                    Method::POST,
                    &format!("/slurm/{v}/job/submit"),
                    Some(submit_body(v, job)),
                )
                .await?;
            match ans.get("job_id") {
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(SlurmError::Protocol(format!("submit answered {ans}"))),
            }
        })
    }

    fn jobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<JobInfo>, SlurmError>> {
        Box::pin(async move {
            let v = self.version().await?;
            let ans = self
                .call(Method::GET, &format!("/slurm/{v}/jobs"), None)
                .await?;
            Ok(parse_jobs(&ans, prefix))
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SlurmError>> {
        Box::pin(async move {
            let v = self.version().await?;
            self.call(Method::DELETE, &format!("/slurm/{v}/job/{id}"), None)
                .await
                .map(|_| ())
        })
    }

    fn describe(&self) -> String {
        match self.version.get() {
            Some(v) => format!("slurmrestd {v}"),
            None => "slurmrestd".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Submission {
        Submission {
            name: "fg-m-ab".into(),
            script: "#!/bin/bash\necho hi\n".into(),
            partition: Some("gpu".into()),
            account: None,
            qos: None,
            time_limit_min: 5,
            nodes: 1,
            gres: "gpu:2".into(),
            env: vec![("A".into(), "1,2 3".into())],
            workdir: "/tmp".into(),
            output: "/tmp/%j.out".into(),
        }
    }

    #[test]
    fn the_newest_offered_version_is_used() {
        let paths = [
            "/slurm/v0.0.38/job/submit",
            "/slurm/v0.0.37/job/submit",
            "/openapi/v3",
        ];
        assert_eq!(pick_version(paths.into_iter()), Some("v0.0.38"));
        let paths = ["/slurm/v0.0.40/job/submit", "/slurm/v0.0.42/job/submit"];
        assert_eq!(pick_version(paths.into_iter()), Some("v0.0.42"));
        assert_eq!(
            pick_version(["/slurm/v0.0.36/job/submit"].into_iter()),
            None
        );
    }

    #[test]
    fn submit_bodies_follow_the_version() {
        let old = submit_body("v0.0.38", &job());
        assert_eq!(old["script"], "#!/bin/bash\necho hi\n");
        assert_eq!(old["job"]["environment"]["A"], "1,2 3");
        assert_eq!(old["job"]["time_limit"], 5);
        assert_eq!(old["job"]["partition"], "gpu");
        assert!(old["job"].get("account").is_none());
        let new = submit_body("v0.0.41", &job());
        assert!(new.get("script").is_none());
        assert_eq!(new["job"]["script"], "#!/bin/bash\necho hi\n");
        assert_eq!(new["job"]["environment"][0], "A=1,2 3");
        assert_eq!(new["job"]["time_limit"]["number"], 5);
        assert_eq!(new["job"]["tres_per_node"], "gres/gpu:2");
    }

    #[test]
    fn jobs_of_both_shapes_parse() {
        let old = json!({"jobs": [
            {"job_id": 7, "name": "fg-m-ab", "job_state": "RUNNING", "nodes": "n1",
             "start_time": 100, "end_time": 400},
            {"job_id": 8, "name": "someone-else", "job_state": "RUNNING"}
        ]});
        let j = parse_jobs(&old, "fg-m-");
        assert_eq!(j.len(), 1);
        assert_eq!(
            (j[0].id.as_str(), j[0].state, j[0].end_time),
            ("7", JobState::Running, 400)
        );
        let new = json!({"jobs": [
            {"job_id": 9, "name": "fg-m-cd", "job_state": ["PENDING"], "nodes": "",
             "start_time": {"set": true, "number": 0}, "end_time": {"set": false, "number": 0}}
        ]});
        let j = parse_jobs(&new, "fg-m-");
        assert_eq!((j[0].id.as_str(), j[0].state), ("9", JobState::Pending));
    }

    /// Answers recorded from a real slurmrestd (Slurm 22.05, v0.0.38) by
    /// `scripts/slurm/collect-samples.sh`.
    #[test]
    fn real_v0_0_38_answers_parse() {
        let jobs: Value = serde_json::from_str(include_str!(
            "../../../scripts/slurm/samples/v0.0.38-jobs-response.json"
        ))
        .unwrap();
        let j = parse_jobs(&jobs, "");
        assert!(!j.is_empty());
        assert!(
            j[0].start_time > 0 && j[0].end_time > j[0].start_time,
            "{j:?}"
        );
        let submit: Value = serde_json::from_str(include_str!(
            "../../../scripts/slurm/samples/v0.0.38-job-submit-response.json"
        ))
        .unwrap();
        assert!(submit["job_id"].is_number());
        assert_eq!(errors_of(&submit), None);
        let refused: Value = serde_json::from_str(include_str!(
            "../../../scripts/slurm/samples/v0.0.38-job-submit-error-response.json"
        ))
        .unwrap();
        assert_eq!(
            errors_of(&refused).unwrap(),
            "Invalid partition name specified"
        );
        let paths = include_str!("../../../scripts/slurm/samples/openapi-v3-paths.txt");
        let paths = paths.lines().filter_map(|l| l.split_whitespace().last());
        assert_eq!(pick_version(paths), Some("v0.0.38"));
        // What this client sends is what the real server accepted.
        let sent: Value = serde_json::from_str(include_str!(
            "../../../scripts/slurm/samples/v0.0.38-job-submit-request.json"
        ))
        .unwrap();
        let ours = submit_body("v0.0.38", &job());
        for k in [
            "name",
            "partition",
            "nodes",
            "tasks_per_node",
            "gres",
            "time_limit",
            "current_working_directory",
            "standard_output",
            "environment",
        ] {
            assert!(ours["job"].get(k).is_some(), "{k} missing from {ours}");
            assert_eq!(
                std::mem::discriminant(&ours["job"][k]),
                std::mem::discriminant(&sent["job"][k]),
                "{k}: {ours} vs {sent}"
            );
        }
    }

    #[test]
    fn errors_read_as_one_message() {
        let v = json!({"errors": [{"error": "Invalid partition name specified", "error_number": 2015}]});
        assert_eq!(errors_of(&v).unwrap(), "Invalid partition name specified");
        assert_eq!(errors_of(&json!({"errors": []})), None);
    }
}
