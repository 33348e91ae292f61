//! Live configuration through the config file: the real `fairgate serve` binary re-reads its
//! file on SIGHUP and applies declared tenants, groups and admission settings without a
//! restart, while a request in flight keeps going.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fairgate_sim::SimConfig;
use serde_json::Value;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_text(port: u16, dir: &std::path::Path, sim: &str, weight: u32, mode: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
database = "sqlite://{db}"
data_dir = "{data}"
admin_token = "{ADMIN}"

[admission]
mode = "{mode}"

[[models]]
name = "m"
[[models.backends]]
url = "{sim}"
max_in_flight = 4

[[groups]]
name = "physics"
weight = 3

[[tenants]]
name = "lab"
weight = {weight}
group = "physics"
[tenants.policy]
max_queue = 7
"#,
        db = dir.join("fg.db").display(),
        data = dir.display(),
    )
}

async fn get(base: &str, path: &str) -> Option<Value> {
    let r = reqwest::Client::new()
        .get(format!("{base}/admin/v1{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

#[tokio::test]
async fn sighup_applies_the_file_without_a_restart() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fairgate.toml");
    let port = free_port();
    std::fs::write(&path, config_text(port, dir.path(), &sim.url, 2, "fair")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fairgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("FAIRGATE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let srv = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let mut tenant = None;
    for _ in 0..300 {
        if let Some(v) = get(&srv.base, "/tenants/lab").await {
            tenant = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tenant = tenant.expect("fairgate serve did not come up");
    assert_eq!(tenant["weight"], 2, "{tenant}");
    assert_eq!(tenant["group"], "physics");
    assert_eq!(tenant["policy"]["max_queue"], 7);
    let sched = get(&srv.base, "/scheduler").await.unwrap();
    assert_eq!(sched["models"][0]["mode"], "fair", "{sched}");

    // Change weight and mode in the file, add a backend and change the routing, then SIGHUP.
    let second = Sim::start(SimConfig::instant("m")).await;
    let mut f = std::fs::File::create(&path).unwrap();
    let text = config_text(port, dir.path(), &sim.url, 5, "fifo")
        + &format!(
            "\n[routing]\nstrategy = \"round_robin\"\n\n[[models.backends]]\nurl = \"{}\"\nmax_in_flight = 2\n",
            second.url
        );
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    let pid = srv.child.id().to_string();
    let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(ok.success());
    let mut applied = false;
    for _ in 0..300 {
        let t = get(&srv.base, "/tenants/lab").await.unwrap();
        let s = get(&srv.base, "/scheduler").await.unwrap();
        if t["weight"] == 5 && s["models"][0]["mode"] == "fifo" {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(applied, "SIGHUP did not apply the new file");
    let b = get(&srv.base, "/backends").await.unwrap();
    assert_eq!(b["strategy"], "round_robin", "{b}");
    let urls: Vec<&str> = b["data"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["url"].as_str())
        .collect();
    assert_eq!(urls, vec![sim.url.as_str(), second.url.as_str()]);
    assert_eq!(
        b["data"][0]["capacity"], 6,
        "the new backend's slots count at once"
    );

    // A broken file is refused and the running config stays.
    std::fs::write(&path, "listen = ").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = get(&srv.base, "/tenants/lab").await.expect("still serving");
    assert_eq!(t["weight"], 5);
}
