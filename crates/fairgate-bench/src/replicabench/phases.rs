//! The five measurements, each against the running [`Fleet`]: weighted shares with tenants
//! pinned to a replica or spread over all, reclaim after `kill -9`, propagation of admin
//! changes from one replica to another, and the latency one replica adds over a gateway
//! without `[cluster]`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::analysis::{mean_occupancy, over_admission, Occupancy, Placement};
use super::fleet::{admin_get, members, Fleet, INSTANT_MODEL};
use crate::fairbench::driver::{drive_routed, RunOut};
use crate::fairbench::report::{analyse, RunReport};
use crate::fairbench::scenarios::{Load, SLOTS};
use crate::harness::http::scrape;
use crate::harness::metrics::gauge;
use crate::harness::process::{ADMIN_TOKEN, MODEL};
use crate::harness::stream::{Ctx, Rec};

/// How often the backend's occupancy is read.
const OCCUPANCY_POLL: Duration = Duration::from_millis(20);
/// How often the reclaim watch reads the survivors.
const RECLAIM_POLL: Duration = Duration::from_millis(20);
/// How often replica B is asked whether a change arrived, and for how long.
const PROPAGATION_POLL: Duration = Duration::from_millis(5);
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// Closed-loop connections and `max_tokens` of the latency phase.
pub(crate) const LATENCY_CONCURRENCY: usize = 8;
pub(crate) const LATENCY_MAX_TOKENS: u64 = 16;
/// Rounds of the latency phase: single and replica alternate, so drift of the machine's
/// speed falls on both.
pub(crate) const LATENCY_ROUNDS: usize = 5;

/// One context per gateway, all with the same start and deadline.
fn contexts(client: &reqwest::Client, urls: &[String], seconds: f64) -> Vec<Arc<Ctx>> {
    let base = Ctx::new(client, &urls[0], seconds);
    urls.iter()
        .map(|u| {
            Arc::new(Ctx {
                client: client.clone(),
                url: format!("{u}/v1/chat/completions"),
                t0: base.t0,
                deadline: base.deadline,
            })
        })
        .collect()
}

/// Reads the simulator's running and waiting gauges every [`OCCUPANCY_POLL`] until `until`.
async fn sample_occupancy(
    client: reqwest::Client,
    sim: String,
    t0: Instant,
    until: Instant,
) -> Vec<Occupancy> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(OCCUPANCY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        tick.tick().await;
        let Some(page) = scrape(&client, &sim).await else {
            continue;
        };
        if let (Some(running), Some(waiting)) = (
            gauge(&page, "vllm:num_requests_running"),
            gauge(&page, "vllm:num_requests_waiting"),
        ) {
            out.push(Occupancy {
                t: t0.elapsed().as_secs_f64(),
                running,
                waiting,
            });
        }
    }
    out
}

/// Requests sent to each of `n` gateways, and how many of them failed.
fn per_gateway(recs: &[Rec], n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .map(|g| {
            let mine = recs.iter().filter(|r| r.gateway == g);
            let errors = mine.clone().filter(|r| r.error.is_some()).count();
            (mine.count(), errors)
        })
        .collect()
}

/// Phases 1 and 2.
pub(crate) struct ShareOut {
    pub(crate) placement: Placement,
    pub(crate) report: RunReport,
    pub(crate) max_occupancy: f64,
    pub(crate) over: f64,
    /// (requests, errors) per replica.
    pub(crate) per_replica: Vec<(usize, usize)>,
}

impl ShareOut {
    pub(crate) fn worst_error(&self) -> f64 {
        self.report
            .tenants
            .iter()
            .map(|t| t.share_err)
            .fold(0.0, f64::max)
    }
}

/// The weighted load through all replicas, each stream to the replica `placement` names.
pub(crate) async fn shares(
    fleet: &Fleet,
    client: &reqwest::Client,
    placement: Placement,
    load: &Load,
    keys: &[String],
    seed: u64,
) -> ShareOut {
    let urls = fleet.urls();
    let n = urls.len();
    let ctxs = contexts(client, &urls, load.seconds);
    let sampler = tokio::spawn(sample_occupancy(
        client.clone(),
        fleet.timed_sim.clone(),
        ctxs[0].t0,
        ctxs[0].deadline,
    ));
    let all: Vec<usize> = (0..load.tenants.len()).collect();
    let recs = drive_routed(
        &ctxs,
        |i, s| placement.replica(i, s, n),
        load,
        keys,
        &all,
        seed,
    )
    .await;
    let occupancy = sampler.await.unwrap_or_default();
    let (w0, w1) = load.window();
    let per_replica = per_gateway(&recs, n);
    let run = RunOut {
        mode: placement.name(),
        probe: Vec::new(),
        recs,
        sim_load: mean_occupancy(&occupancy, w0, w1),
    };
    let (max_occupancy, over) = over_admission(&occupancy, SLOTS);
    ShareOut {
        placement,
        report: analyse(load, &run),
        max_occupancy,
        over,
        per_replica,
    }
}

/// Waits (up to 20 s) until the backend and every live replica are idle, then one heartbeat
/// more so leases and views settle before the next phase.
pub(crate) async fn settle(fleet: &Fleet, client: &reqwest::Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut busy = false;
        if let Some(page) = scrape(client, &fleet.timed_sim).await {
            let running = gauge(&page, "vllm:num_requests_running").unwrap_or(0.0);
            let waiting = gauge(&page, "vllm:num_requests_waiting").unwrap_or(0.0);
            busy |= running + waiting > 0.0;
        }
        for r in fleet.replicas.iter().filter(|r| r.child.is_some()) {
            let v = admin_get(client, &r.url, &format!("/scheduler?model={MODEL}")).await;
            let m = &v["models"][0];
            busy |= m["in_flight"].as_u64().unwrap_or(0) + m["queued"].as_u64().unwrap_or(0) > 0;
        }
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(fleet.timings.heartbeat_ms)).await;
}

/// One read of the survivors during the reclaim watch.
#[derive(Clone, Debug)]
pub(crate) struct SurvivorPoll {
    /// Each survivor's lease of the timed model (`/admin/v1/scheduler` `max_in_flight`).
    pub(crate) leases: Vec<Option<u64>>,
    /// No survivor's `/admin/v1/cluster` lists the killed member any more.
    pub(crate) members_gone: bool,
}

impl SurvivorPoll {
    /// The survivors' leases add up to the whole capacity.
    pub(crate) fn full(&self) -> bool {
        self.leases.iter().all(Option::is_some)
            && self.leases.iter().flatten().sum::<u64>() >= SLOTS as u64
    }
}

/// Phase 3.
pub(crate) struct ReclaimOut {
    pub(crate) victim: String,
    /// Seconds into the load when it was killed.
    pub(crate) kill_at: f64,
    /// Every replica's lease just before the kill.
    pub(crate) leases_before: Vec<Option<u64>>,
    /// Seconds after the kill: the survivors' leases add up to the capacity, the killed
    /// member left every survivor's view (`None`: not within the watch).
    pub(crate) lease_full: Option<f64>,
    pub(crate) members_gone: Option<f64>,
    /// Seconds the survivors were watched after the kill.
    pub(crate) watched: f64,
    pub(crate) series: Vec<(f64, SurvivorPoll)>,
    pub(crate) max_occupancy: f64,
    pub(crate) over: f64,
    /// (requests, errors) per replica; the killed one's streams fail after the kill.
    pub(crate) per_replica: Vec<(usize, usize)>,
}

async fn lease_of(client: &reqwest::Client, url: &str) -> Option<u64> {
    admin_get(client, url, &format!("/scheduler?model={MODEL}")).await["models"][0]["max_in_flight"]
        .as_u64()
}

/// The spread load; `kill_at` seconds in, the last replica gets SIGKILL and the survivors are
/// read every [`RECLAIM_POLL`] until their leases add up to the capacity again and none of
/// them lists the dead member, or the load ends.
pub(crate) async fn reclaim(
    fleet: &mut Fleet,
    client: &reqwest::Client,
    load: &Load,
    keys: &[String],
    seed: u64,
    kill_at: f64,
) -> anyhow::Result<ReclaimOut> {
    let urls = fleet.urls();
    let n = urls.len();
    let victim_i = n - 1;
    let victim = fleet.replicas[victim_i].member.clone();
    let mut child = fleet.replicas[victim_i]
        .child
        .take()
        .context("the replica to kill is not running")?;
    let survivors = urls[..victim_i].to_vec();
    let ctxs = contexts(client, &urls, load.seconds);
    let (t0, deadline) = (ctxs[0].t0, ctxs[0].deadline);
    let sampler = tokio::spawn(sample_occupancy(
        client.clone(),
        fleet.timed_sim.clone(),
        t0,
        deadline,
    ));
    let all: Vec<usize> = (0..load.tenants.len()).collect();
    let watch = async {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(kill_at)).into()).await;
        let mut before = Vec::new();
        for u in &urls {
            before.push(lease_of(client, u).await);
        }
        let killed = Instant::now();
        // tokio's kill is SIGKILL: no leave, no flush, as `kill -9`.
        let _ = child.start_kill();
        let _ = child.wait().await;
        let mut series = Vec::new();
        while Instant::now() < deadline {
            let mut poll = SurvivorPoll {
                leases: Vec::new(),
                members_gone: true,
            };
            for u in &survivors {
                poll.leases.push(lease_of(client, u).await);
                let seen = members(client, u).await;
                poll.members_gone &= !seen.is_empty() && !seen.contains(&victim);
            }
            let done = poll.full() && poll.members_gone;
            series.push((killed.elapsed().as_secs_f64(), poll));
            if done {
                break;
            }
            tokio::time::sleep(RECLAIM_POLL).await;
        }
        (
            (killed - t0).as_secs_f64(),
            before,
            killed.elapsed().as_secs_f64(),
            series,
        )
    };
    let (recs, (kill_s, leases_before, watched, series)) = tokio::join!(
        drive_routed(
            &ctxs,
            |i, s| Placement::Spread.replica(i, s, n),
            load,
            keys,
            &all,
            seed
        ),
        watch
    );
    let occupancy = sampler.await.unwrap_or_default();
    let (max_occupancy, over) = over_admission(&occupancy, SLOTS);
    Ok(ReclaimOut {
        victim,
        kill_at: kill_s,
        leases_before,
        lease_full: super::analysis::first_time(&series, SurvivorPoll::full),
        members_gone: super::analysis::first_time(&series, |p| p.members_gone),
        watched,
        series,
        max_occupancy,
        over,
        per_replica: per_gateway(&recs, n),
    })
}

/// Phase 4: milliseconds from replica A's answer to the change being visible on B (`None`:
/// not within [`PROPAGATION_LIMIT`]), and A's own answer times.
pub(crate) struct PropagationOut {
    pub(crate) weight: Vec<Option<f64>>,
    pub(crate) new_key: Vec<Option<f64>>,
    pub(crate) revoke: Vec<Option<f64>>,
    pub(crate) ack_ms: Vec<f64>,
}

/// Polls `check` every [`PROPAGATION_POLL`] until it holds; milliseconds since `from`.
async fn seen_after<F, Fut>(from: Instant, mut check: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if check().await {
            return Some(from.elapsed().as_secs_f64() * 1e3);
        }
        if from.elapsed() > PROPAGATION_LIMIT {
            return None;
        }
        tokio::time::sleep(PROPAGATION_POLL).await;
    }
}

/// `tenant`'s weight in `url`'s scheduler (the instant model's pool).
async fn weight_on(client: &reqwest::Client, url: &str, tenant: &str) -> Option<u64> {
    let v = admin_get(client, url, &format!("/scheduler?model={INSTANT_MODEL}")).await;
    v["models"][0]["tenants"]
        .as_array()?
        .iter()
        .find(|t| t["tenant"] == tenant)?["weight"]
        .as_u64()
}

/// The status of a one-token request with `key` on `url`'s instant model.
pub(crate) async fn chat_status(client: &reqwest::Client, url: &str, key: &str) -> Option<u16> {
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({
            "model": INSTANT_MODEL,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    Some(status)
}

/// Sends an admin request; its JSON answer (`Null` when it has none), or why it failed.
async fn admin_send(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let r = req
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| what.to_owned())?
        .error_for_status()
        .with_context(|| what.to_owned())?;
    Ok(r.json().await.unwrap_or(Value::Null))
}

/// `changes` weight changes of `tenant`, then `changes` keys created and revoked, each made
/// through `a` and watched for on `b`.
pub(crate) async fn propagation(
    client: &reqwest::Client,
    a: &str,
    b: &str,
    tenant: &str,
    changes: usize,
) -> anyhow::Result<PropagationOut> {
    if seen_after(Instant::now(), || async {
        weight_on(client, b, tenant).await.is_some()
    })
    .await
    .is_none()
    {
        bail!("replica b never listed tenant {tenant}");
    }
    let mut out = PropagationOut {
        weight: Vec::new(),
        new_key: Vec::new(),
        revoke: Vec::new(),
        ack_ms: Vec::new(),
    };
    for k in 0..changes {
        // 2, 3, 4, ...: always another weight than the one before.
        let w = 2 + k as u64;
        let sent = Instant::now();
        let req = client
            .patch(format!("{a}/admin/v1/tenants/{tenant}"))
            .json(&json!({"weight": w}));
        admin_send(req, "changing a weight on replica a").await?;
        let acked = Instant::now();
        out.ack_ms.push((acked - sent).as_secs_f64() * 1e3);
        out.weight.push(
            seen_after(acked, || async {
                weight_on(client, b, tenant).await == Some(w)
            })
            .await,
        );
    }
    for k in 0..changes {
        let sent = Instant::now();
        let req = client
            .post(format!("{a}/admin/v1/keys"))
            .json(&json!({"tenant": tenant, "name": format!("propagation-{k}")}));
        let v = admin_send(req, "creating a key on replica a").await?;
        let acked = Instant::now();
        out.ack_ms.push((acked - sent).as_secs_f64() * 1e3);
        let (id, key) = match (v["id"].as_str(), v["key"].as_str()) {
            (Some(i), Some(k)) => (i.to_owned(), k.to_owned()),
            _ => bail!("no id/key in the key creation answer: {v}"),
        };
        let created = seen_after(acked, || async {
            chat_status(client, b, &key).await == Some(200)
        })
        .await;
        out.new_key.push(created);
        let sent = Instant::now();
        let req = client.delete(format!("{a}/admin/v1/keys/{id}"));
        admin_send(req, "revoking a key on replica a").await?;
        let acked = Instant::now();
        out.ack_ms.push((acked - sent).as_secs_f64() * 1e3);
        // A key b never knew is refused at once: that is no propagation.
        out.revoke.push(match created {
            Some(_) => {
                seen_after(acked, || async {
                    chat_status(client, b, &key).await == Some(401)
                })
                .await
            }
            None => None,
        });
    }
    Ok(out)
}

/// Phase 5: per-request latencies (ms) of the single gateway and of one replica.
pub(crate) struct LatencyOut {
    pub(crate) single_ms: Vec<f64>,
    pub(crate) replica_ms: Vec<f64>,
    pub(crate) single_errors: usize,
    pub(crate) replica_errors: usize,
    pub(crate) round_s: f64,
}

/// [`LATENCY_CONCURRENCY`] closed loops of non-streamed requests for `seconds`; returns the
/// latencies of the successful ones (ms) and the number of failures.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    seconds: f64,
) -> (Vec<f64>, usize) {
    let body = json!({
        "model": INSTANT_MODEL,
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": LATENCY_MAX_TOKENS,
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let url = format!("{url}/v1/chat/completions");
    let mut workers = Vec::new();
    for _ in 0..LATENCY_CONCURRENCY {
        let (client, url, key, body) = (client.clone(), url.clone(), key.to_owned(), body.clone());
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        if let Ok((l, e)) = w.await {
            lat.extend(l);
            errors += e;
        }
    }
    (lat, errors)
}

/// The same closed loop through the single gateway and through replica `replica`, in
/// [`LATENCY_ROUNDS`] alternating rounds of `seconds / rounds` each, after a 1 s warm-up of
/// each.
pub(crate) async fn latency(
    single: (&str, &str),
    replica: (&str, &str),
    seconds: f64,
) -> anyhow::Result<LatencyOut> {
    let client = crate::harness::http::bench_client()?;
    for (url, key) in [single, replica] {
        closed_loop(&client, url, key, 1.0).await;
    }
    let round_s = seconds / LATENCY_ROUNDS as f64;
    let mut out = LatencyOut {
        single_ms: Vec::new(),
        replica_ms: Vec::new(),
        single_errors: 0,
        replica_errors: 0,
        round_s,
    };
    for round in 0..LATENCY_ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_single in order {
            let (url, key) = if is_single { single } else { replica };
            let (lat, errors) = closed_loop(&client, url, key, round_s).await;
            if is_single {
                out.single_ms.extend(lat);
                out.single_errors += errors;
            } else {
                out.replica_ms.extend(lat);
                out.replica_errors += errors;
            }
        }
    }
    Ok(out)
}
