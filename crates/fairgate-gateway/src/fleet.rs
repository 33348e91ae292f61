//! The fleet's capacity, shared (issue 13): with `[cluster]`, a model's slots (the sum of its
//! backends' `max_in_flight`) belong to all replicas together. Each replica leases the part it
//! needs from Redis ([`fairgate_cluster::Cluster::lease`]) and admits locally within its lease,
//! so a request on a replica with a free leased slot costs no round trip, and the backends never
//! see more than their configuration allows from the whole fleet.
//!
//! One task per model keeps the lease right: it asks for what is in flight and queued plus one
//! spare slot (so the next arrival starts without waiting), at once when a request queues and
//! otherwise every `lease_interval`. An idle replica keeps only its spare, so busy replicas can
//! use the rest (no static 1/N split); replicas that all want more than there is get a max-min
//! fair split, each shrinking as its own requests end.
//!
//! When Redis does not answer, the lease stays what it was: the replica keeps serving within
//! its last share and never grows, so the fleet cannot over-admit. A replica that starts while
//! Redis is down has no share yet and queues until Redis answers.

use std::sync::Arc;
use std::time::Duration;

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
    loop {
        let capacity = pool.configured_capacity();
        let in_flight = pool.fair.in_flight();
        let want = (in_flight + pool.fair.queued() + SPARE).min(capacity);
        // What this replica may have in flight until the answer is applied.
        let holding = in_flight.max(granted);
        let weight = pool.fair.active_weight();
        match cluster
            .lease(
                &pool.name,
                capacity as u64,
                want as u64,
                holding as u64,
                weight,
            )
            .await
        {
            Ok(g) => {
                granted = usize::try_from(g).unwrap_or(usize::MAX).min(capacity);
                pool.set_fleet_share(granted, capacity);
            }
            // Redis down: keep the last share (never grow), see the module docs.
            Err(e) => tracing::debug!(model = %pool.name, error = %e, "lease not renewed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pool.fair.demand().notified() => {
                // A burst of arrivals costs one call per gap, not one per request.
                tokio::time::sleep(interval / 10).await;
            }
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
