//! Slurm through its commands, where no slurmrestd runs: `sbatch --parsable` (the script on
//! standard input, parameters in the environment, so values with commas or spaces survive),
//! `squeue` with a fixed format, `scancel`.

use std::path::PathBuf;
use std::process::Stdio;

use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::api::{JobInfo, JobState, Slurm, SlurmError, Submission};

/// The commands, from `bin_dir` or `PATH`.
pub struct Cli {
    bin_dir: Option<PathBuf>,
}

/// `squeue`'s format: id, name, state, nodes, start and (expected) end time.
const FORMAT: &str = "%i|%j|%T|%N|%S|%e";

impl Cli {
    pub fn new(bin_dir: Option<PathBuf>) -> Cli {
        Cli { bin_dir }
    }

    fn cmd(&self, name: &str) -> Command {
        let path = match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        };
        let mut c = Command::new(path);
        c.kill_on_drop(true);
        c
    }
}

fn run_err(what: &str, e: std::io::Error) -> SlurmError {
    SlurmError::Unreachable(format!("{what}: {e}"))
}

/// `sbatch`'s arguments for `job` (the script itself goes on standard input).
pub fn sbatch_args(job: &Submission) -> Vec<String> {
    let mut a = vec![
        "--parsable".to_owned(),
        format!("--job-name={}", job.name),
        format!("--time={}", job.time_limit_min),
        format!("--nodes={}", job.nodes),
        "--ntasks-per-node=1".to_owned(),
        format!("--gres={}", job.gres),
        format!("--chdir={}", job.workdir),
        format!("--output={}", job.output),
    ];
    // Only the job's parameters go with it (their values from sbatch's environment, so commas
    // and spaces survive): never the gateway's own environment, which holds its secrets.
    let names: Vec<&str> = job.env.iter().map(|(k, _)| k.as_str()).collect();
    a.push(if names.is_empty() {
        "--export=NONE".to_owned()
    } else {
        format!("--export={}", names.join(","))
    });
    for (flag, v) in [
        ("--partition", &job.partition),
        ("--account", &job.account),
        ("--qos", &job.qos),
    ] {
        if let Some(v) = v {
            a.push(format!("{flag}={v}"));
        }
    }
    a
}

/// `squeue` time fields: `2026-12-07T18:01:02` (UTC: `squeue` runs with `TZ=UTC`), or
/// `N/A`/`Unknown` → 0.
fn parse_time(s: &str) -> i64 {
    let s = s.trim();
    let Some((date, time)) = s.split_once('T') else {
        return 0;
    };
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let t: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || t.len() != 3 {
        return 0;
    }
    days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3_600 + t[1] * 60 + t[2]
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `squeue -h -o FORMAT` lines.
pub fn parse_squeue(out: &str, prefix: &str) -> Vec<JobInfo> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            if f.len() < 6 || !f[1].starts_with(prefix) {
                return None;
            }
            Some(JobInfo {
                id: f[0].trim().to_owned(),
                name: f[1].trim().to_owned(),
                state: JobState::from_slurm(f[2]),
                slurm_state: f[2].trim().to_owned(),
                nodes: f[3].trim().to_owned(),
                start_time: parse_time(f[4]),
                end_time: parse_time(f[5]),
            })
        })
        .collect()
}

impl Slurm for Cli {
    fn submit<'a>(&'a self, job: &'a Submission) -> BoxFuture<'a, Result<String, SlurmError>> {
        Box::pin(async move {
            let mut c = self.cmd("sbatch");
            c.args(sbatch_args(job))
                .envs(job.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().map_err(|e| run_err("sbatch", e))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(job.script.as_bytes())
                    .await
                    .map_err(|e| run_err("sbatch stdin", e))?;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| run_err("sbatch", e))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(SlurmError::Refused(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
            // `--parsable`: `id` or `id;cluster`.
            let id = stdout.trim().split(';').next().unwrap_or("").to_owned();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SlurmError::Protocol(format!("sbatch printed `{stdout}`")));
            }
            Ok(id)
        })
    }

    fn jobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<JobInfo>, SlurmError>> {
        Box::pin(async move {
            let out = self
                .cmd("squeue")
                .args(["-h", "-o", FORMAT])
                // Times are printed in the client's zone; read them as UTC.
                .env("TZ", "UTC")
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| run_err("squeue", e))?;
            if !out.status.success() {
                return Err(SlurmError::Unreachable(format!(
                    "squeue: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout), prefix))
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SlurmError>> {
        Box::pin(async move {
            let out = self
                .cmd("scancel")
                .arg(id)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| run_err("scancel", e))?;
            if !out.status.success() {
                return Err(SlurmError::Refused(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "sbatch/squeue/scancel".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_parse_and_filter_by_prefix() {
        let out = "17|fg-m-ab12|RUNNING|node1|2026-12-07T18:00:00|2026-12-07T19:00:00\n\
                   18|other|RUNNING|node1|2026-12-07T18:00:00|2026-12-07T19:00:00\n\
                   19|fg-m-cd34|PENDING||N/A|N/A\n";
        let jobs = parse_squeue(out, "fg-m-");
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].id, "17");
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[0].end_time - jobs[0].start_time, 3_600);
        assert_eq!(jobs[1].state, JobState::Pending);
        assert_eq!(jobs[1].start_time, 0);
        // 2026-12-07T18:00:00Z
        assert_eq!(jobs[0].start_time, 1_796_666_400);
    }

    #[test]
    fn sbatch_gets_every_setting() {
        let job = Submission {
            name: "fg-m-1".into(),
            script: "#!/bin/bash\n".into(),
            partition: Some("gpu".into()),
            account: None,
            qos: Some("normal".into()),
            time_limit_min: 5,
            nodes: 2,
            gres: "gpu:4".into(),
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("VLLM_API_KEY".into(), "k,with,commas".into()),
            ],
            workdir: "/tmp".into(),
            output: "/tmp/%j.out".into(),
        };
        let a = sbatch_args(&job);
        for want in [
            "--parsable",
            "--job-name=fg-m-1",
            "--time=5",
            "--nodes=2",
            "--gres=gpu:4",
            "--partition=gpu",
            "--qos=normal",
            "--export=PATH,VLLM_API_KEY",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--account")));
    }
}
