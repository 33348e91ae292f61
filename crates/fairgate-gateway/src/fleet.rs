//! The fleet's capacity, shared (issue 13): with `[cluster]`, a model's slots (the sum of its
//! backends' `max_in_flight`) belong to all replicas together. Each replica leases the part it
//! needs from Redis ([`fairgate_cluster::Cluster::lease`]) and admits locally within its lease,
//! so a request on a replica with a free leased slot costs no round trip, and the backends never
//! see more than their configuration allows from the whole fleet.
//!
//! One task per model keeps the lease right: it asks for what is in flight and queued plus one
//! spare slot (so the next arrival starts without waiting), at once when a request queues and
//! otherwise every `lease_interval`. An idle replica keeps only its spare, so busy replicas can
//! use the rest (no static 1/N split); replicas that all want more than there is split it in
//! proportion to the weights of the tenants with work on each (weighted max-min), each
//! shrinking as its own requests end.
//!
//! The same task keeps the fair-share counters global: it adds what this replica served per
//! tenant to the fleet's totals and charges each tenant's local counter with what the other
//! replicas served ([`fairgate_cluster::Cluster::exchange_service`]). So each replica orders
//! its own queue by fleet-wide service, and the lease split sends the slots that do not divide
//! evenly to the replica whose waiting work is furthest behind: over time every tenant gets its
//! weighted share of the fleet, also when each tenant's traffic reaches only one replica.
//!
//! Engine slots (a priority engine's `engine_max_seqs` above its `max_in_flight`, taken only by
//! tenants below their share) are a second capacity per model, leased the same way, so the
//! engines never see more than `engine_max_seqs` from the whole fleet either.
//!
//! When Redis does not answer, the lease stays what it was: the replica keeps serving within
//! its last share and never grows, so the fleet cannot over-admit. A replica that starts while
//! Redis is down has no share yet and queues until Redis answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use fairgate_cluster::Cluster;
use tokio_util::sync::CancellationToken;

use crate::upstream::ModelPool;

/// Slots an idle replica keeps for the next arrival.
const SPARE: usize = 1;

/// Starts one lease task per model. Until its first grant a replica fills nothing.
pub fn start(
    pools: &[Arc<ModelPool>],
    cluster: &Arc<Cluster>,
    interval: Duration,
    shutdown: &CancellationToken,
) {
    for pool in pools {
        pool.set_fleet_share(0, pool.configured_capacity());
        pool.set_fleet_engine_share(0, pool.engine_slots().0);
        tokio::spawn(keep_lease(
            pool.clone(),
            cluster.clone(),
            interval,
            shutdown.clone(),
        ));
    }
}

async fn keep_lease(
    pool: Arc<ModelPool>,
    cluster: Arc<Cluster>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut granted = 0usize;
    let mut engine_granted = 0usize;
    // Slots are owed to this replica (others hold them until some of their requests end):
    // look again soon rather than after a whole interval, so the slot does not sit idle.
    let mut owed = false;
    let mut service = ServiceExchange::default();
    let mut published: Option<tokio::time::Instant> = None;
    loop {
        service.run(&pool, &cluster).await;
        // What this replica holds, for the fleet-wide scheduler view (once a heartbeat).
        if published.is_none_or(|t| t.elapsed() >= cluster.config().heartbeat) {
            published = Some(tokio::time::Instant::now());
            publish_state(&pool, &cluster).await;
        }
        let capacity = pool.configured_capacity();
        let in_flight = pool.fair.in_flight();
        let weight = pool.fair.active_weight();
        let head = pool
            .fair
            .head_counter()
            .map(|counter| fairgate_cluster::Head {
                counter,
                step: pool.fair.counter_step(),
            });
        let ask = Ask {
            weight,
            head,
            cluster: &cluster,
        };
        let want = in_flight + pool.fair.queued() + SPARE;
        if let Some((g, o)) = ask
            .renew(&pool.name, capacity, want, in_flight, granted)
            .await
        {
            granted = g;
            pool.set_fleet_share(granted, capacity);
            owed = o;
        }
        // Engine slots (`engine_max_seqs` above `max_in_flight` on priority engines) are a
        // second capacity, leased the same way under their own name.
        let (engine_capacity, engine_in_flight) = pool.engine_slots();
        if engine_capacity > 0 || engine_granted > 0 {
            let name = engine_lease_name(&pool.name);
            let want = engine_in_flight + SPARE;
            let renewed = ask
                .renew(
                    &name,
                    engine_capacity,
                    want,
                    engine_in_flight,
                    engine_granted,
                )
                .await;
            if let Some((g, o)) = renewed {
                engine_granted = g;
                pool.set_fleet_engine_share(engine_granted, engine_capacity);
                owed |= o;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pool.fair.demand().notified() => {
                // A burst of arrivals costs one call per gap, not one per request.
                tokio::time::sleep(interval / 10).await;
            }
            _ = tokio::time::sleep(if owed { interval / 10 } else { interval }) => {}
        }
    }
}

/// What one lease round asks with, for each of a model's capacities.
struct Ask<'a> {
    weight: u64,
    head: Option<fairgate_cluster::Head>,
    cluster: &'a Cluster,
}

impl Ask<'_> {
    /// Renews the lease `name` of `capacity` slots, wanting `want` (at most all) with
    /// `in_flight` running and `granted` last: the new grant and whether slots are owed, or
    /// `None` when Redis did not answer (the last share stays: never grow, see the module docs).
    async fn renew(
        &self,
        name: &str,
        capacity: usize,
        want: usize,
        in_flight: usize,
        granted: usize,
    ) -> Option<(usize, bool)> {
        // What this replica may have in flight until the answer is applied.
        let holding = in_flight.max(granted);
        let want = want.min(capacity);
        match self
            .cluster
            .lease(
                name,
                capacity as u64,
                want as u64,
                holding as u64,
                self.weight,
                self.head,
            )
            .await
        {
            Ok(lease) => {
                let g = usize::try_from(lease.grant)
                    .unwrap_or(usize::MAX)
                    .min(capacity);
                Some((g, lease.owed))
            }
            Err(e) => {
                tracing::debug!(lease = %name, error = %e, "lease not renewed");
                None
            }
        }
    }
}

/// The lease name of a model's engine slots, apart from its ordinary slots (leased under the
/// model's name).
fn engine_lease_name(model: &str) -> String {
    format!("{model}#engine-slots")
}

/// This replica's side of the fleet's service totals for one pool.
#[derive(Default)]
struct ServiceExchange {
    /// Served here and not yet added to the totals (kept across a failed exchange).
    pending: HashMap<String, i64>,
    /// Each tenant's total as last seen.
    seen: HashMap<String, i64>,
    /// The totals' version as last seen (only tenants changed since are sent back).
    since: u64,
}

impl ServiceExchange {
    async fn run(&mut self, pool: &ModelPool, cluster: &Cluster) {
        for (t, d) in pool.fair.take_local_service() {
            *self.pending.entry(t.to_string()).or_default() += d;
        }
        let deltas: Vec<(String, i64)> = self
            .pending
            .iter()
            .filter(|(_, d)| **d != 0)
            .map(|(t, d)| (t.clone(), *d))
            .collect();
        let (version, totals) = match cluster
            .exchange_service(&pool.name, self.since, &deltas)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(model = %pool.name, error = %e, "service not exchanged");
                return;
            }
        };
        let mine: HashMap<String, i64> = deltas.into_iter().collect();
        self.pending.clear();
        if version < self.since {
            // Redis lost its totals (restarted empty): start over from what it has now.
            self.seen.clear();
            self.since = 0;
            return;
        }
        self.since = version;
        for (tenant, total) in totals {
            let last = self.seen.insert(tenant.clone(), total).unwrap_or(0);
            let others = total - last - mine.get(&tenant).copied().unwrap_or(0);
            if others != 0 {
                pool.fair.absorb_remote_service(&tenant, 1, others);
            }
        }
    }
}

/// One replica's part of a model, as the fleet-wide scheduler view shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub member: String,
    /// This replica's lease (the slots it may fill).
    pub max_in_flight: usize,
    pub in_flight: usize,
    pub queued: usize,
    /// Per tenant with work here: (queued, in flight).
    pub tenants: BTreeMap<String, (usize, usize)>,
}

fn state_key(pool: &str, member: &str) -> String {
    format!("state:{pool}:{member}")
}

/// Publishes this replica's part of `pool` for the other replicas' views; it expires with
/// the member TTL, so a dead replica drops out of the view.
async fn publish_state(pool: &ModelPool, cluster: &Cluster) {
    let s = pool.fair.state();
    let state = ReplicaState {
        member: cluster.member_id().to_owned(),
        max_in_flight: s.max_in_flight,
        in_flight: s.in_flight,
        queued: s.queued,
        tenants: s
            .tenants
            .iter()
            .filter(|t| t.view.queued + t.view.in_flight > 0)
            .map(|t| (t.view.name.to_string(), (t.view.queued, t.view.in_flight)))
            .collect(),
    };
    let Ok(json) = serde_json::to_string(&state) else {
        return;
    };
    let ttl = cluster.config().member_ttl;
    if let Err(e) = cluster
        .put(&state_key(&pool.name, cluster.member_id()), &json, ttl)
        .await
    {
        tracing::debug!(model = %pool.name, error = %e, "replica state not published");
    }
}

/// Every live replica's part of the model `pool`, as last published (this one included).
pub async fn fleet_state(
    pool: &str,
    cluster: &Cluster,
) -> Result<Vec<ReplicaState>, fairgate_cluster::ClusterError> {
    let keys: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| state_key(pool, &m.id))
        .collect();
    Ok(cluster
        .get_many(&keys)
        .await?
        .into_iter()
        .flatten()
        .filter_map(|j| serde_json::from_str(&j).ok())
        .collect())
}
