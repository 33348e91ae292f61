//! The two-level weighted virtual-token-counter queue (VTC, Sheng et al., OSDI '24).
//!
//! Every tenant and every group has a counter of the weighted service it has received: each
//! charge of `cost` raw units (w_in × prompt + w_out × completion tokens) adds
//! `cost × SCALE / weight`. The next request to dispatch comes from the backlogged group with
//! the smallest counter, and within it from the backlogged tenant with the smallest counter;
//! inside a tenant, `interactive` requests go before `batch` ones. Because counters grow with
//! service divided by weight, backlogged tenants receive service in proportion to their weights.
//!
//! Idle time cannot be banked: when a tenant (or group) becomes active again, meaning it had
//! nothing queued and nothing in flight, its counter is lifted to the smallest counter among
//! the active ones. Otherwise a tenant that slept for an hour would return with a counter far
//! behind and monopolise the pool until it caught up.
//!
//! Tenants without a group compete at the top level as a group of their own, with their
//! tenant weight as its weight.
//!
//! Dispatch is O(log n) in the number of tenants: backlogged and active sets are ordered by
//! `(counter, index)`. In [`Mode::Fifo`] the queue ignores counters and classes and dispatches
//! strictly in arrival order, which is what a plain proxy does (kept for comparison).
//!
//! This module is pure: no time, no IO, no locks. [`crate::pool`] wraps it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fairgate_types::Priority;

/// Fixed-point scale of counters, so that dividing by a weight keeps sub-token precision.
pub const SCALE: u64 = 1 << 16;

/// Dispatch order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Weighted fair share by virtual token counters.
    #[default]
    Fair,
    /// First come, first served across all tenants.
    Fifo,
}

/// Interned tenant handle, valid for the queue that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(u32);

/// Handle of a queued entry, for cancellation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    slot: u32,
    generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum GroupKey {
    Named(Arc<str>),
    /// The implicit group of an ungrouped tenant.
    Solo(u32),
}

struct Entry<T> {
    tenant: u32,
    class: usize,
    seq: u64,
    /// Expected length (output tokens) for the short-first band; `u64::MAX` when unknown.
    hint: u64,
    item: T,
}

struct TenantState {
    name: Arc<str>,
    group: u32,
    weight: u64,
    counter: u64,
    /// Queued entries per priority class, by arrival sequence.
    queues: [BTreeMap<u64, u32>; 2],
    queued: usize,
    in_flight: usize,
    /// Raw (unweighted) cost served, for reporting.
    service: u64,
}

impl TenantState {
    fn active(&self) -> bool {
        self.queued > 0 || self.in_flight > 0
    }
}

struct GroupState {
    key: GroupKey,
    weight: u64,
    counter: u64,
    /// Member tenants with something queued, by `(counter, tenant)`.
    backlogged: BTreeSet<(u64, u32)>,
    /// Member tenants with something queued or in flight.
    active: BTreeSet<(u64, u32)>,
    service: u64,
}

/// Read-only view of one tenant, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantView {
    pub name: Arc<str>,
    /// Group name; `None` for an ungrouped tenant.
    pub group: Option<Arc<str>>,
    pub weight: u64,
    pub group_weight: u64,
    /// Virtual counter in weighted tokens (already divided by [`SCALE`]).
    pub counter: f64,
    pub queued: usize,
    pub in_flight: usize,
    /// Raw cost served since start.
    pub service: u64,
}

/// The queue. `T` is whatever the caller needs to wake a waiter.
pub struct FairQueue<T> {
    mode: Mode,
    tenants: Vec<TenantState>,
    tenant_ix: HashMap<Arc<str>, u32>,
    groups: Vec<GroupState>,
    group_ix: HashMap<GroupKey, u32>,
    backlogged_groups: BTreeSet<(u64, u32)>,
    active_groups: BTreeSet<(u64, u32)>,
    /// Every queued entry by arrival, for FIFO mode.
    fifo: BTreeMap<u64, u32>,
    slots: Vec<Option<Entry<T>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    next_seq: u64,
    len: usize,
    /// Short-first band in counter units (0: off). See [`FairQueue::set_band`].
    band: u64,
}

/// Tenants (and groups) looked at per dispatch for the short-first band: keeps dispatch
/// O(log n) however many tenants sit inside the band.
const BAND_CANDIDATES: usize = 8;

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new(Mode::Fair)
    }
}

impl<T> FairQueue<T> {
    pub fn new(mode: Mode) -> Self {
        FairQueue {
            mode,
            tenants: Vec::new(),
            tenant_ix: HashMap::new(),
            groups: Vec::new(),
            group_ix: HashMap::new(),
            backlogged_groups: BTreeSet::new(),
            active_groups: BTreeSet::new(),
            fifo: BTreeMap::new(),
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            len: 0,
            band: 0,
        }
    }

    /// Sets the short-first band, in raw cost units as a weight-1 tenant is charged them
    /// (0 turns it off). Among backlogged groups whose counter is within the band of the
    /// smallest, and within them tenants within the band of their group's smallest, the
    /// request expected to be shortest goes first (ties: fair order). Since a tenant is picked
    /// only while its counter is at most `band` ahead of the fair choice, the VTC bound on the
    /// counter difference of two backlogged tenants, `2U` (U: the largest counter increment
    /// one request causes), becomes at most `2U + band`.
    pub fn set_band(&mut self, raw_cost: u64) {
        self.band = raw_cost.saturating_mul(SCALE);
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches the dispatch order; takes effect on the next pop.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Entries queued, all tenants.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tenant_id(&self, name: &str) -> Option<TenantId> {
        self.tenant_ix.get(name).map(|&i| TenantId(i))
    }

    /// Declares a tenant or updates its weight and group (live: the next dispatch uses them).
    /// `group_weight` applies to a named group; an ungrouped tenant's own group takes
    /// `weight`. Weights below 1 count as 1.
    pub fn set_tenant(
        &mut self,
        name: &str,
        weight: u32,
        group: Option<&str>,
        group_weight: u32,
    ) -> TenantId {
        let weight = u64::from(weight.max(1));
        let t = match self.tenant_ix.get(name) {
            Some(&t) => t,
            None => {
                let t = self.tenants.len() as u32;
                let name: Arc<str> = Arc::from(name);
                let key = match group {
                    Some(g) => GroupKey::Named(Arc::from(g)),
                    None => GroupKey::Solo(t),
                };
                let gw = match group {
                    Some(_) => u64::from(group_weight.max(1)),
                    None => weight,
                };
                let g = self.group_for(key, gw);
                self.tenants.push(TenantState {
                    name: name.clone(),
                    group: g,
                    weight,
                    counter: 0,
                    queues: [BTreeMap::new(), BTreeMap::new()],
                    queued: 0,
                    in_flight: 0,
                    service: 0,
                });
                self.tenant_ix.insert(name, t);
                return TenantId(t);
            }
        };
        self.tenants[t as usize].weight = weight;
        let want = match group {
            Some(g) => GroupKey::Named(Arc::from(g)),
            None => GroupKey::Solo(t),
        };
        let cur = self.tenants[t as usize].group;
        if self.groups[cur as usize].key != want {
            let gw = match group {
                Some(_) => u64::from(group_weight.max(1)),
                None => weight,
            };
            let g = self.group_for(want, gw);
            self.move_tenant(t, g);
        }
        let g = self.tenants[t as usize].group as usize;
        self.groups[g].weight = match &self.groups[g].key {
            GroupKey::Solo(_) => weight,
            GroupKey::Named(_) => u64::from(group_weight.max(1)),
        };
        TenantId(t)
    }

    fn group_for(&mut self, key: GroupKey, weight: u64) -> u32 {
        if let Some(&g) = self.group_ix.get(&key) {
            return g;
        }
        let g = self.groups.len() as u32;
        self.groups.push(GroupState {
            key: key.clone(),
            weight,
            counter: 0,
            backlogged: BTreeSet::new(),
            active: BTreeSet::new(),
            service: 0,
        });
        self.group_ix.insert(key, g);
        g
    }

    /// Moves a tenant to another group, carrying its queued and in-flight work. Its counter is
    /// lifted into the new group (it may not arrive with banked credit).
    fn move_tenant(&mut self, t: u32, to: u32) {
        let was_active = self.tenants[t as usize].active();
        let was_backlogged = self.tenants[t as usize].queued > 0;
        if was_backlogged {
            self.unbacklog(t);
        }
        if was_active {
            self.deactivate(t);
        }
        self.tenants[t as usize].group = to;
        if was_active {
            self.activate(t);
        }
        if was_backlogged {
            self.backlog(t);
        }
    }

    /// Queues `item` for `tenant` in `class`.
    pub fn push(&mut self, tenant: TenantId, class: Priority, item: T) -> Ticket {
        self.push_hinted(tenant, class, u64::MAX, item)
    }

    /// [`FairQueue::push`] with the request's expected length (output tokens), which the
    /// short-first band orders by.
    pub fn push_hinted(&mut self, tenant: TenantId, class: Priority, hint: u64, item: T) -> Ticket {
        let t = tenant.0;
        let seq = self.next_seq;
        self.next_seq += 1;
        let class = class.rank();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(Entry {
                    tenant: t,
                    class,
                    seq,
                    hint,
                    item,
                });
                s
            }
            None => {
                self.slots.push(Some(Entry {
                    tenant: t,
                    class,
                    seq,
                    hint,
                    item,
                }));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        if !self.tenants[t as usize].active() {
            self.activate(t);
        }
        let ts = &mut self.tenants[t as usize];
        ts.queues[class].insert(seq, slot);
        ts.queued += 1;
        if ts.queued == 1 {
            self.backlog(t);
        }
        self.fifo.insert(seq, slot);
        self.len += 1;
        Ticket {
            slot,
            generation: self.generations[slot as usize],
        }
    }

    /// Takes a queued entry out (its waiter left). `None` if it was already dispatched.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        if self.generations.get(ticket.slot as usize) != Some(&ticket.generation) {
            return None;
        }
        let e = self.slots[ticket.slot as usize].take()?;
        self.generations[ticket.slot as usize] = ticket.generation.wrapping_add(1);
        self.free.push(ticket.slot);
        self.fifo.remove(&e.seq);
        self.len -= 1;
        let t = e.tenant;
        let ts = &mut self.tenants[t as usize];
        ts.queues[e.class].remove(&e.seq);
        ts.queued -= 1;
        if ts.queued == 0 {
            self.unbacklog(t);
            if !self.tenants[t as usize].active() {
                self.deactivate(t);
            }
        }
        Some(e.item)
    }

    /// The entry the next [`FairQueue::pop`] would return.
    pub fn peek(&self) -> Option<(TenantId, &T)> {
        let slot = self.next_slot()?;
        let e = self.slots[slot as usize].as_ref()?;
        Some((TenantId(e.tenant), &e.item))
    }

    fn next_slot(&self) -> Option<u32> {
        match self.mode {
            Mode::Fifo => self.fifo.first_key_value().map(|(_, &s)| s),
            Mode::Fair if self.band > 0 => self.shortest_in_band(),
            Mode::Fair => {
                let &(_, g) = self.backlogged_groups.first()?;
                let &(_, t) = self.groups[g as usize].backlogged.first()?;
                self.head_of(t)
            }
        }
    }

    /// A tenant's next entry: its oldest of the most urgent class.
    fn head_of(&self, t: u32) -> Option<u32> {
        self.tenants[t as usize]
            .queues
            .iter()
            .find_map(|q| q.first_key_value().map(|(_, &s)| s))
    }

    /// The fair choice, unless a tenant within the band (see [`FairQueue::set_band`]) has a
    /// shorter request next. The fair choice is the first candidate looked at, so it wins ties.
    fn shortest_in_band(&self) -> Option<u32> {
        let &(floor, _) = self.backlogged_groups.first()?;
        let mut best: Option<(u64, u32)> = None;
        for &(gc, g) in self.backlogged_groups.iter().take(BAND_CANDIDATES) {
            if gc > floor.saturating_add(self.band) {
                break;
            }
            let members = &self.groups[g as usize].backlogged;
            let Some(&(tfloor, _)) = members.first() else {
                continue;
            };
            for &(tc, t) in members.iter().take(BAND_CANDIDATES) {
                if tc > tfloor.saturating_add(self.band) {
                    break;
                }
                let Some(slot) = self.head_of(t) else {
                    continue;
                };
                let hint = self.slots[slot as usize]
                    .as_ref()
                    .map_or(u64::MAX, |e| e.hint);
                if best.is_none_or(|(h, _)| hint < h) {
                    best = Some((hint, slot));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    /// Dispatches the next entry: it leaves the queue and counts as in flight for its tenant
    /// until [`FairQueue::finish`].
    pub fn pop(&mut self) -> Option<(TenantId, T)> {
        let slot = self.next_slot()?;
        let generation = self.generations[slot as usize];
        let tenant = self.slots[slot as usize].as_ref()?.tenant;
        // In flight first, so removing the last queued entry does not deactivate the tenant.
        self.tenants[tenant as usize].in_flight += 1;
        let item = self.remove(Ticket { slot, generation })?;
        Some((TenantId(tenant), item))
    }

    /// Admits a request directly (the pool had room and nobody was waiting).
    pub fn start(&mut self, tenant: TenantId) {
        let t = tenant.0;
        if !self.tenants[t as usize].active() {
            self.activate(t);
        }
        self.tenants[t as usize].in_flight += 1;
    }

    /// A dispatched request ended.
    pub fn finish(&mut self, tenant: TenantId) {
        let t = tenant.0;
        let ts = &mut self.tenants[t as usize];
        debug_assert!(ts.in_flight > 0, "finish without start");
        ts.in_flight = ts.in_flight.saturating_sub(1);
        if !ts.active() {
            self.deactivate(t);
        }
    }

    /// Charges `cost` raw units of service to a tenant and its group.
    pub fn charge(&mut self, tenant: TenantId, cost: u64) {
        self.adjust(tenant, cost, u64::saturating_add);
    }

    /// Takes back `cost` raw units charged earlier (a prompt estimate that turned out too
    /// high). Callers only refund what the same request was charged, so a refund never
    /// creates credit the tenant did not have.
    pub fn refund(&mut self, tenant: TenantId, cost: u64) {
        self.adjust(tenant, cost, u64::saturating_sub);
    }

    fn adjust(&mut self, tenant: TenantId, cost: u64, op: fn(u64, u64) -> u64) {
        if cost == 0 {
            return;
        }
        let t = tenant.0;
        let (dt, dg, g) = self.deltas(t, cost);
        let (tc, gc) = (
            self.tenants[t as usize].counter,
            self.groups[g as usize].counter,
        );
        self.set_tenant_counter(t, op(tc, dt));
        self.set_group_counter(g, op(gc, dg));
        let ts = &mut self.tenants[t as usize];
        ts.service = op(ts.service, cost);
        let gs = &mut self.groups[g as usize];
        gs.service = op(gs.service, cost);
    }

    /// Counter increments of a charge for the tenant and its group.
    /// How far charging `cost` raw units to `tenant` moves its group's counter.
    pub fn group_delta(&self, tenant: TenantId, cost: u64) -> u64 {
        self.deltas(tenant.0, cost).1
    }

    fn deltas(&self, t: u32, cost: u64) -> (u64, u64, u32) {
        let ts = &self.tenants[t as usize];
        let g = ts.group;
        let scaled = cost.saturating_mul(SCALE);
        (
            scaled / ts.weight,
            scaled / self.groups[g as usize].weight,
            g,
        )
    }

    pub fn queued(&self, tenant: TenantId) -> usize {
        self.tenants[tenant.0 as usize].queued
    }

    pub fn in_flight(&self, tenant: TenantId) -> usize {
        self.tenants[tenant.0 as usize].in_flight
    }

    /// Raw counter (scaled by [`SCALE`]).
    pub fn counter(&self, tenant: TenantId) -> u64 {
        self.tenants[tenant.0 as usize].counter
    }

    pub fn group_counter(&self, tenant: TenantId) -> u64 {
        self.groups[self.tenants[tenant.0 as usize].group as usize].counter
    }

    pub fn name(&self, tenant: TenantId) -> &Arc<str> {
        &self.tenants[tenant.0 as usize].name
    }

    /// Whether `tenant` would be served next if a slot freed now (it is not being held back
    /// by other tenants' shares). Used to tell pool-wide overload from a tenant over its share.
    pub fn is_next_in_line(&self, tenant: TenantId) -> bool {
        match self.mode {
            Mode::Fifo => true,
            Mode::Fair => {
                let g = self.tenants[tenant.0 as usize].group;
                self.backlogged_groups.first().map(|&(_, x)| x) == Some(g)
                    && self.groups[g as usize].backlogged.first().map(|&(_, x)| x) == Some(tenant.0)
            }
        }
    }

    /// A tenant's weight.
    pub fn weight(&self, tenant: TenantId) -> u64 {
        self.tenants[tenant.0 as usize].weight
    }

    /// Tenants with something queued or in flight.
    pub fn active_tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        self.active_groups.iter().flat_map(|&(_, g)| {
            self.groups[g as usize]
                .active
                .iter()
                .map(|&(_, t)| TenantId(t))
        })
    }

    /// The counter of the group served next (fair mode; `None` with nothing queued): how far
    /// behind the most-behind waiting work here is.
    pub fn head_counter(&self) -> Option<u64> {
        match self.mode {
            Mode::Fifo => None,
            Mode::Fair => self.backlogged_groups.first().map(|&(c, _)| c),
        }
    }

    /// Smallest counter among active tenants, the floor a returning tenant is lifted to.
    pub fn min_active_counter(&self, tenant: TenantId) -> Option<u64> {
        let g = self.tenants[tenant.0 as usize].group;
        self.groups[g as usize].active.first().map(|&(c, _)| c)
    }

    pub fn tenants(&self) -> impl Iterator<Item = TenantView> + '_ {
        self.tenants.iter().map(|t| {
            let g = &self.groups[t.group as usize];
            TenantView {
                name: t.name.clone(),
                group: match &g.key {
                    GroupKey::Named(n) => Some(n.clone()),
                    GroupKey::Solo(_) => None,
                },
                weight: t.weight,
                group_weight: g.weight,
                counter: t.counter as f64 / SCALE as f64,
                queued: t.queued,
                in_flight: t.in_flight,
                service: t.service,
            }
        })
    }

    // ---- set maintenance -------------------------------------------------------------

    fn set_tenant_counter(&mut self, t: u32, c: u64) {
        let ts = &self.tenants[t as usize];
        let old = ts.counter;
        if old == c {
            return;
        }
        let g = ts.group as usize;
        let (backlogged, active) = (ts.queued > 0, ts.active());
        let gs = &mut self.groups[g];
        if backlogged {
            gs.backlogged.remove(&(old, t));
            gs.backlogged.insert((c, t));
        }
        if active {
            gs.active.remove(&(old, t));
            gs.active.insert((c, t));
        }
        self.tenants[t as usize].counter = c;
    }

    fn set_group_counter(&mut self, g: u32, c: u64) {
        let gs = &self.groups[g as usize];
        let old = gs.counter;
        if old == c {
            return;
        }
        if !gs.backlogged.is_empty() {
            self.backlogged_groups.remove(&(old, g));
            self.backlogged_groups.insert((c, g));
        }
        if !gs.active.is_empty() {
            self.active_groups.remove(&(old, g));
            self.active_groups.insert((c, g));
        }
        self.groups[g as usize].counter = c;
    }

    /// The tenant goes from idle to active: lift, then join the active sets.
    fn activate(&mut self, t: u32) {
        let g = self.tenants[t as usize].group;
        if let Some(&(floor, _)) = self.groups[g as usize].active.first() {
            let c = self.tenants[t as usize].counter.max(floor);
            self.tenants[t as usize].counter = c;
        }
        let c = self.tenants[t as usize].counter;
        let group_was_idle = self.groups[g as usize].active.is_empty();
        if group_was_idle {
            if let Some(&(floor, _)) = self.active_groups.first() {
                let gc = self.groups[g as usize].counter.max(floor);
                self.groups[g as usize].counter = gc;
            }
            let gc = self.groups[g as usize].counter;
            self.active_groups.insert((gc, g));
        }
        self.groups[g as usize].active.insert((c, t));
    }

    fn deactivate(&mut self, t: u32) {
        let g = self.tenants[t as usize].group;
        let c = self.tenants[t as usize].counter;
        let gs = &mut self.groups[g as usize];
        gs.active.remove(&(c, t));
        if gs.active.is_empty() {
            let gc = gs.counter;
            self.active_groups.remove(&(gc, g));
        }
    }

    fn backlog(&mut self, t: u32) {
        let g = self.tenants[t as usize].group;
        let c = self.tenants[t as usize].counter;
        let gs = &mut self.groups[g as usize];
        if gs.backlogged.is_empty() {
            self.backlogged_groups.insert((gs.counter, g));
        }
        gs.backlogged.insert((c, t));
    }

    fn unbacklog(&mut self, t: u32) {
        let g = self.tenants[t as usize].group;
        let c = self.tenants[t as usize].counter;
        let gs = &mut self.groups[g as usize];
        gs.backlogged.remove(&(c, t));
        if gs.backlogged.is_empty() {
            self.backlogged_groups.remove(&(gs.counter, g));
        }
    }

    /// Checks every internal invariant; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut total = 0;
        for (i, t) in self.tenants.iter().enumerate() {
            let i = i as u32;
            let n: usize = t.queues.iter().map(|q| q.len()).sum();
            assert_eq!(n, t.queued, "queued count of {}", t.name);
            total += n;
            let g = &self.groups[t.group as usize];
            assert_eq!(g.backlogged.contains(&(t.counter, i)), t.queued > 0);
            assert_eq!(g.active.contains(&(t.counter, i)), t.active());
        }
        assert_eq!(total, self.len);
        assert_eq!(self.fifo.len(), self.len);
        for (i, g) in self.groups.iter().enumerate() {
            let i = i as u32;
            assert_eq!(
                self.backlogged_groups.contains(&(g.counter, i)),
                !g.backlogged.is_empty()
            );
            assert_eq!(
                self.active_groups.contains(&(g.counter, i)),
                !g.active.is_empty()
            );
            for &(_, t) in &g.backlogged {
                assert_eq!(self.tenants[t as usize].group, i);
            }
        }
        assert_eq!(
            self.backlogged_groups.len(),
            self.groups
                .iter()
                .filter(|g| !g.backlogged.is_empty())
                .count()
        );
        assert_eq!(
            self.active_groups.len(),
            self.groups.iter().filter(|g| !g.active.is_empty()).count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_counter_goes_first_and_classes_order_within_a_tenant() {
        let mut q = FairQueue::new(Mode::Fair);
        let a = q.set_tenant("a", 1, None, 1);
        let b = q.set_tenant("b", 1, None, 1);
        q.push(a, Priority::Batch, "a-batch");
        q.push(a, Priority::Interactive, "a-int");
        q.push(b, Priority::Batch, "b-batch");
        q.charge(a, 10);
        // b has the lower counter.
        assert_eq!(q.pop().map(|(_, x)| x), Some("b-batch"));
        q.charge(b, 100);
        // a's interactive request jumps a's batch request, not b.
        assert_eq!(q.pop().map(|(_, x)| x), Some("a-int"));
        assert_eq!(q.pop().map(|(_, x)| x), Some("a-batch"));
        assert!(q.pop().is_none());
        q.check_invariants();
    }

    #[test]
    fn the_band_puts_a_shorter_request_first_only_within_it() {
        let mut q = FairQueue::new(Mode::Fair);
        let long = q.set_tenant("long", 1, None, 1);
        let short = q.set_tenant("short", 1, None, 1);
        q.push_hinted(long, Priority::Interactive, 500, "long");
        q.push_hinted(short, Priority::Interactive, 30, "short");
        // short is 100 units ahead of long: the fair choice is long.
        q.charge(short, 100);
        assert_eq!(q.peek().map(|(_, x)| *x), Some("long"));
        // Within a band of 100 units the shorter request goes first...
        q.set_band(100);
        assert_eq!(q.peek().map(|(_, x)| *x), Some("short"));
        // ...but not once it is further ahead than the band.
        q.charge(short, 1);
        assert_eq!(q.peek().map(|(_, x)| *x), Some("long"));
        // Equal hints keep the fair order; so does an unknown hint.
        q.set_band(1_000);
        let other = q.set_tenant("other", 1, None, 1);
        q.push(other, Priority::Interactive, "other");
        q.charge(other, 50);
        assert_eq!(q.pop().map(|(_, x)| x), Some("short"));
        assert_eq!(q.pop().map(|(_, x)| x), Some("long"));
        assert_eq!(q.pop().map(|(_, x)| x), Some("other"));
        q.check_invariants();
    }

    /// Two backlogged tenants, one with short requests and one with long: with the band the
    /// short one is served more often, but the counters never drift apart by more than
    /// `2U + band` (U: the largest counter increment of one request), and without the band
    /// by more than `2U`.
    #[test]
    fn the_band_keeps_the_counter_difference_within_its_bound() {
        for band in [0u64, 150, 600] {
            let mut q = FairQueue::new(Mode::Fair);
            let a = q.set_tenant("a", 1, None, 1);
            let b = q.set_tenant("b", 2, None, 2);
            q.set_band(band);
            // a: cost 40, 10 output tokens; b: cost 300, 120 output tokens (weight 2: 150).
            let (cost_a, cost_b) = (40u64, 300u64);
            let u = (cost_a.max(cost_b / 2)) * SCALE;
            q.push_hinted(a, Priority::Interactive, 10, 'a');
            q.push_hinted(b, Priority::Interactive, 120, 'b');
            let (mut served_a, mut worst) = (0, 0u64);
            for _ in 0..2_000 {
                let (t, who) = q.pop().unwrap();
                if who == 'a' {
                    served_a += 1;
                    q.charge(t, cost_a);
                    q.push_hinted(a, Priority::Interactive, 10, 'a');
                } else {
                    q.charge(t, cost_b);
                    q.push_hinted(b, Priority::Interactive, 120, 'b');
                }
                q.finish(t);
                worst = worst.max(q.counter(a).abs_diff(q.counter(b)));
            }
            assert!(
                worst <= 2 * u + band * SCALE,
                "band {band}: difference {worst} over 2U + band = {}",
                2 * u + band * SCALE
            );
            if band > 0 {
                assert!(served_a > 0);
            }
            q.check_invariants();
        }
    }

    #[test]
    fn fifo_ignores_counters() {
        let mut q = FairQueue::new(Mode::Fifo);
        let a = q.set_tenant("a", 1, None, 1);
        let b = q.set_tenant("b", 1, None, 1);
        q.push(a, Priority::Batch, 1);
        q.push(b, Priority::Interactive, 2);
        q.charge(a, 1_000);
        assert_eq!(q.pop().map(|(_, x)| x), Some(1));
        q.set_mode(Mode::Fair);
        q.push(a, Priority::Interactive, 3);
        assert_eq!(q.pop().map(|(_, x)| x), Some(2));
    }

    #[test]
    fn returning_tenant_is_lifted_to_the_active_floor() {
        let mut q: FairQueue<()> = FairQueue::new(Mode::Fair);
        let a = q.set_tenant("a", 1, None, 1);
        let b = q.set_tenant("b", 1, None, 1);
        q.start(a);
        q.charge(a, 5_000);
        q.push(b, Priority::Interactive, ());
        // Ungrouped tenants compete as groups of their own: the lift is at group level.
        assert_eq!(q.group_counter(b), q.group_counter(a));
        let c = q.set_tenant("c", 1, Some("g"), 1);
        let d = q.set_tenant("d", 1, Some("g"), 1);
        q.start(c);
        q.charge(c, 700);
        q.push(d, Priority::Batch, ());
        assert_eq!(q.counter(d), q.counter(c));
        q.check_invariants();
    }

    #[test]
    fn weights_divide_charges() {
        let mut q: FairQueue<()> = FairQueue::new(Mode::Fair);
        let a = q.set_tenant("a", 4, None, 1);
        q.start(a);
        q.charge(a, 400);
        assert_eq!(q.counter(a), 100 * SCALE);
    }

    #[test]
    fn removal_is_by_ticket_and_stale_tickets_do_nothing() {
        let mut q = FairQueue::new(Mode::Fair);
        let a = q.set_tenant("a", 1, None, 1);
        let t1 = q.push(a, Priority::Interactive, 1);
        assert_eq!(q.remove(t1), Some(1));
        let _t2 = q.push(a, Priority::Interactive, 2);
        // The slot was reused; the old ticket must not remove the new entry.
        assert_eq!(q.remove(t1), None);
        assert_eq!(q.len(), 1);
        q.check_invariants();
    }

    #[test]
    fn group_change_moves_queued_work() {
        let mut q = FairQueue::new(Mode::Fair);
        let a = q.set_tenant("a", 1, Some("physics"), 2);
        q.push(a, Priority::Interactive, 1);
        q.set_tenant("a", 3, None, 1);
        q.check_invariants();
        q.set_tenant("a", 3, Some("chem"), 5);
        q.check_invariants();
        assert_eq!(q.pop().map(|(_, x)| x), Some(1));
        q.finish(a);
        q.check_invariants();
    }
}
