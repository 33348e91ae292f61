//! Spending caps per period (day or month, UTC), in tokens, money or both, per tenant and per
//! key.
//!
//! A request reserves its estimate against every budget line before it runs, may grow the
//! reservation while it streams, and settles its actual usage at the end. Reservations make
//! concurrent requests see each other's in-flight spend, so together they cannot overshoot a
//! cap at admission; usage that happens anyway (an answer longer than reserved on a soft cap)
//! is still charged in full.
//!
//! State sits behind [`BudgetStore`] so a shared store can replace [`InProcessBudgets`];
//! [`Budgets`] is the front the gateway uses, and [`BudgetHold`] releases its reservation if it
//! is dropped without being settled.
//!
//! Rollover: an account whose period has ended restarts at zero spent for the current period.
//! Live reservations carry over into the new period, since the requests holding them will be
//! charged there: a hold settles into the period that is current when it settles (the one it
//! was reserved in if that is still current, otherwise the new one).

use chrono::{DateTime, Datelike, Months, NaiveDate, SecondsFormat, Utc};
use fairgate_types::{Budget, BudgetPeriod, Micros};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

const DAY_MS: i64 = 86_400_000;

/// Who a budget applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    Tenant(String),
    Key(String),
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetScope::Tenant(name) => write!(f, "tenant `{name}`"),
            BudgetScope::Key(id) => write!(f, "key `{id}`"),
        }
    }
}

/// An amount of usage: tokens and their price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Spend {
    pub tokens: u64,
    pub cost: Micros,
}

impl Spend {
    pub const ZERO: Spend = Spend {
        tokens: 0,
        cost: Micros(0),
    };

    pub fn new(tokens: u64, cost: Micros) -> Spend {
        Spend { tokens, cost }
    }

    pub fn saturating_add(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.saturating_add(other.tokens),
            cost: Micros(self.cost.0.saturating_add(other.cost.0)),
        }
    }

    pub fn saturating_sub(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.saturating_sub(other.tokens),
            cost: Micros(self.cost.0.saturating_sub(other.cost.0)),
        }
    }

    /// Componentwise maximum.
    pub fn max(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.max(other.tokens),
            cost: self.cost.max(other.cost),
        }
    }

    /// Componentwise minimum.
    pub fn min(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.min(other.tokens),
            cost: self.cost.min(other.cost),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Spend::ZERO
    }
}

/// Start of the period containing `now_ms`: 00:00 UTC of the day, or of the 1st of the month,
/// in unix milliseconds.
pub fn period_start(period: BudgetPeriod, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS) * DAY_MS;
    match period {
        BudgetPeriod::Day => day,
        BudgetPeriod::Month => DateTime::<Utc>::from_timestamp_millis(now_ms)
            .and_then(|t| NaiveDate::from_ymd_opt(t.year(), t.month(), 1))
            .map(|d| {
                d.and_time(chrono::NaiveTime::MIN)
                    .and_utc()
                    .timestamp_millis()
            })
            // Only for instants beyond chrono's range (±262 000 years).
            .unwrap_or(day),
    }
}

/// Start of the period after the one starting at `start_ms` (when a budget resets).
pub fn next_period_start(period: BudgetPeriod, start_ms: i64) -> i64 {
    match period {
        BudgetPeriod::Day => start_ms.saturating_add(DAY_MS),
        BudgetPeriod::Month => DateTime::<Utc>::from_timestamp_millis(start_ms)
            .and_then(|t| t.checked_add_months(Months::new(1)))
            .map(|t| period_start(BudgetPeriod::Month, t.timestamp_millis()))
            .unwrap_or(i64::MAX),
    }
}

fn period_index(period: BudgetPeriod) -> usize {
    match period {
        BudgetPeriod::Day => 0,
        BudgetPeriod::Month => 1,
    }
}

const PERIODS: [BudgetPeriod; 2] = [BudgetPeriod::Day, BudgetPeriod::Month];

/// Which cap of a budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    Tokens,
    Cost,
}

impl CapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CapKind::Tokens => "tokens",
            CapKind::Cost => "cost",
        }
    }
}

/// A budget line has too little left; maps to HTTP 429 (or cuts off a hard-capped stream).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget exhausted: {scope} has used {} of its {} for this {}; it resets at {}",
    amount(*.cap, .spent.saturating_add(*.reserved)),
    cap_amount(*.cap, *.limit),
    .period.as_str(),
    rfc3339(*.resets_at)
)]
pub struct BudgetExceeded {
    pub scope: BudgetScope,
    pub period: BudgetPeriod,
    pub cap: CapKind,
    /// The cap, in tokens or micros.
    pub limit: u64,
    /// Settled usage this period, in the cap's unit.
    pub spent: u64,
    /// Held by requests in flight, in the cap's unit.
    pub reserved: u64,
    /// When the period ends, unix ms.
    pub resets_at: i64,
}

fn amount(cap: CapKind, n: u64) -> String {
    match cap {
        CapKind::Tokens => n.to_string(),
        CapKind::Cost => format!("{}.{:06}", n / 1_000_000, n % 1_000_000),
    }
}

fn cap_amount(cap: CapKind, n: u64) -> String {
    match cap {
        CapKind::Tokens => format!("{n} tokens"),
        CapKind::Cost => format!("{} spending cap", amount(cap, n)),
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// One budget line's state, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    pub scope: BudgetScope,
    pub period: BudgetPeriod,
    /// Caps as of the last reservation against this line (`None` if none seen or uncapped);
    /// the live policy is authoritative.
    pub tokens_cap: Option<u64>,
    pub cost_cap: Option<Micros>,
    pub spent: Spend,
    pub reserved: Spend,
    pub period_start: i64,
    pub resets_at: i64,
}

/// One line of a reservation: what is held against one (scope, period) account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLine {
    pub scope: BudgetScope,
    pub period: BudgetPeriod,
    pub tokens_cap: Option<u64>,
    pub cost_cap: Option<Micros>,
    /// Currently held for this request.
    pub reserved: Spend,
}

/// What a [`BudgetStore::reserve`] holds, line by line. Fields are public so other stores can
/// build one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    pub lines: Vec<HeldLine>,
}

/// Budget state, swappable for a shared store.
pub trait BudgetStore: Send + Sync + 'static {
    /// Replace what was spent in the period starting at `period_start` (from the ledger, off
    /// the request path); live reservations are kept. A seed for an older period than the
    /// account's is ignored.
    fn seed(&self, scope: &BudgetScope, period: BudgetPeriod, period_start: i64, spent: Spend);

    /// Reserve for one request against every line. `min` is the least the request needs
    /// (prompt estimate plus one output token, priced), `est` its full estimate. Fails if any
    /// line has less than `min` left in a capped dimension; otherwise holds `min(est, left)`
    /// (at least `min`) per line. All or nothing.
    fn reserve(
        &self,
        lines: &[(BudgetScope, Budget)],
        min: Spend,
        est: Spend,
        now_ms: i64,
    ) -> Result<Reservation, BudgetExceeded>;

    /// Grow the reservation so it covers `so_far` on every line; fails, holding nothing more,
    /// when a line's cap would be crossed.
    fn extend(
        &self,
        res: &mut Reservation,
        so_far: Spend,
        now_ms: i64,
    ) -> Result<(), BudgetExceeded>;

    /// Release the reservation and add `actual` to spent on every line, even past the cap.
    fn settle(&self, res: &Reservation, actual: Spend, now_ms: i64);

    /// Release the reservation without charging anything.
    fn release(&self, res: &Reservation);

    /// Each line of `scope`: caps, spent, reserved, period.
    fn status(&self, scope: &BudgetScope, now_ms: i64) -> Vec<BudgetStatus>;

    /// Drop accounts that carry nothing (no spend this period, no reservation). Optional.
    fn sweep(&self, _now_ms: i64) {}
}

#[derive(Clone, Debug)]
struct Account {
    period_start: i64,
    spent: Spend,
    reserved: Spend,
    tokens_cap: Option<u64>,
    cost_cap: Option<Micros>,
}

impl Account {
    fn new(period: BudgetPeriod, now_ms: i64) -> Account {
        Account {
            period_start: period_start(period, now_ms),
            spent: Spend::ZERO,
            reserved: Spend::ZERO,
            tokens_cap: None,
            cost_cap: None,
        }
    }

    /// Move to the period containing `now_ms` if it is later; reservations carry over.
    fn roll(&mut self, period: BudgetPeriod, now_ms: i64) {
        let start = period_start(period, now_ms);
        if start > self.period_start {
            self.period_start = start;
            self.spent = Spend::ZERO;
        }
    }

    fn used(&self) -> Spend {
        self.spent.saturating_add(self.reserved)
    }

    /// Check that `need` more fits under the line's caps; `Err` names the first cap crossed.
    fn check(&self, line: &HeldLine, need: Spend) -> Result<(), CapKind> {
        let used = self.used();
        if let Some(cap) = line.tokens_cap {
            if cap.saturating_sub(used.tokens) < need.tokens {
                return Err(CapKind::Tokens);
            }
        }
        if let Some(cap) = line.cost_cap {
            if cap.0.saturating_sub(used.cost.0) < need.cost.0 {
                return Err(CapKind::Cost);
            }
        }
        Ok(())
    }

    /// What is left under the line's caps; uncapped dimensions are unbounded.
    fn left(&self, line: &HeldLine) -> Spend {
        let used = self.used();
        Spend {
            tokens: line
                .tokens_cap
                .map_or(u64::MAX, |c| c.saturating_sub(used.tokens)),
            cost: Micros(
                line.cost_cap
                    .map_or(u64::MAX, |c| c.0.saturating_sub(used.cost.0)),
            ),
        }
    }

    fn exceeded(&self, line: &HeldLine, cap: CapKind) -> BudgetExceeded {
        let (limit, spent, reserved) = match cap {
            CapKind::Tokens => (
                line.tokens_cap.unwrap_or(u64::MAX),
                self.spent.tokens,
                self.reserved.tokens,
            ),
            CapKind::Cost => (
                line.cost_cap.map_or(u64::MAX, |c| c.0),
                self.spent.cost.0,
                self.reserved.cost.0,
            ),
        };
        BudgetExceeded {
            scope: line.scope.clone(),
            period: line.period,
            cap,
            limit,
            spent,
            reserved,
            resets_at: next_period_start(line.period, self.period_start),
        }
    }
}

type Accounts = HashMap<BudgetScope, [Option<Account>; 2]>;

/// The default [`BudgetStore`]: accounts in this process behind one mutex (never held across
/// an await). Keyed by scope, then period, so the request path looks up without cloning.
#[derive(Debug, Default)]
pub struct InProcessBudgets {
    accounts: Mutex<Accounts>,
}

impl InProcessBudgets {
    pub fn new() -> InProcessBudgets {
        InProcessBudgets::default()
    }

    fn lock(&self) -> MutexGuard<'_, Accounts> {
        // Every mutation is a few integer updates, so a poisoned lock is still consistent.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account for a line, created empty for the current period, rolled to `now_ms`.
    fn account<'a>(
        accounts: &'a mut Accounts,
        scope: &BudgetScope,
        period: BudgetPeriod,
        now_ms: i64,
    ) -> &'a mut Account {
        // Clone the scope only when the account is new.
        if !accounts.contains_key(scope) {
            accounts.insert(scope.clone(), Default::default());
        }
        let slots = accounts.get_mut(scope).expect("inserted above");
        let account =
            slots[period_index(period)].get_or_insert_with(|| Account::new(period, now_ms));
        account.roll(period, now_ms);
        account
    }
}

impl BudgetStore for InProcessBudgets {
    fn seed(&self, scope: &BudgetScope, period: BudgetPeriod, period_start: i64, spent: Spend) {
        let mut accounts = self.lock();
        let slots = accounts.entry(scope.clone()).or_default();
        let slot = &mut slots[period_index(period)];
        match slot {
            None => {
                *slot = Some(Account {
                    period_start,
                    spent,
                    ..Account::new(period, period_start)
                })
            }
            Some(account) if period_start >= account.period_start => {
                account.period_start = period_start;
                account.spent = spent;
            }
            Some(_) => {}
        }
    }

    fn reserve(
        &self,
        lines: &[(BudgetScope, Budget)],
        min: Spend,
        est: Spend,
        now_ms: i64,
    ) -> Result<Reservation, BudgetExceeded> {
        let mut held = merge_lines(lines);
        if held.is_empty() {
            return Ok(Reservation::default());
        }
        let want = est.max(min);
        let mut accounts = self.lock();
        // Lines are distinct accounts, so checking all before taking any is exact.
        for line in &mut held {
            let account = Self::account(&mut accounts, &line.scope, line.period, now_ms);
            account.tokens_cap = line.tokens_cap;
            account.cost_cap = line.cost_cap;
            if let Err(cap) = account.check(line, min) {
                return Err(account.exceeded(line, cap));
            }
            line.reserved = want.min(account.left(line));
        }
        for line in &held {
            let account = Self::account(&mut accounts, &line.scope, line.period, now_ms);
            account.reserved = account.reserved.saturating_add(line.reserved);
        }
        Ok(Reservation { lines: held })
    }

    fn extend(
        &self,
        res: &mut Reservation,
        so_far: Spend,
        now_ms: i64,
    ) -> Result<(), BudgetExceeded> {
        if res
            .lines
            .iter()
            .all(|l| l.reserved.max(so_far) == l.reserved)
        {
            return Ok(());
        }
        let mut accounts = self.lock();
        for line in &res.lines {
            let more = so_far.saturating_sub(line.reserved);
            if more.is_zero() {
                continue;
            }
            let account = Self::account(&mut accounts, &line.scope, line.period, now_ms);
            if let Err(cap) = account.check(line, more) {
                return Err(account.exceeded(line, cap));
            }
        }
        for line in &mut res.lines {
            let more = so_far.saturating_sub(line.reserved);
            if more.is_zero() {
                continue;
            }
            let account = Self::account(&mut accounts, &line.scope, line.period, now_ms);
            account.reserved = account.reserved.saturating_add(more);
            line.reserved = line.reserved.saturating_add(more);
        }
        Ok(())
    }

    fn settle(&self, res: &Reservation, actual: Spend, now_ms: i64) {
        if res.lines.is_empty() {
            return;
        }
        let mut accounts = self.lock();
        for line in &res.lines {
            let account = Self::account(&mut accounts, &line.scope, line.period, now_ms);
            account.reserved = account.reserved.saturating_sub(line.reserved);
            account.spent = account.spent.saturating_add(actual);
        }
    }

    fn release(&self, res: &Reservation) {
        if res.lines.is_empty() {
            return;
        }
        let mut accounts = self.lock();
        for line in &res.lines {
            let account = accounts
                .get_mut(&line.scope)
                .and_then(|slots| slots[period_index(line.period)].as_mut());
            if let Some(account) = account {
                account.reserved = account.reserved.saturating_sub(line.reserved);
            }
        }
    }

    fn status(&self, scope: &BudgetScope, now_ms: i64) -> Vec<BudgetStatus> {
        let accounts = self.lock();
        let Some(slots) = accounts.get(scope) else {
            return Vec::new();
        };
        PERIODS
            .iter()
            .filter_map(|&period| {
                // Show the current period without mutating: roll a copy.
                let mut account = slots[period_index(period)].clone()?;
                account.roll(period, now_ms);
                Some(BudgetStatus {
                    scope: scope.clone(),
                    period,
                    tokens_cap: account.tokens_cap,
                    cost_cap: account.cost_cap,
                    spent: account.spent,
                    reserved: account.reserved,
                    period_start: account.period_start,
                    resets_at: next_period_start(period, account.period_start),
                })
            })
            .collect()
    }

    fn sweep(&self, now_ms: i64) {
        let mut accounts = self.lock();
        accounts.retain(|_, slots| {
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some(account) = slot {
                    account.roll(PERIODS[i], now_ms);
                    if account.spent.is_zero() && account.reserved.is_zero() {
                        *slot = None;
                    }
                }
            }
            slots.iter().any(Option::is_some)
        });
    }
}

/// The lines a request holds: one per (scope, period) account with a cap, nothing reserved
/// yet. Two budgets on the same account merge into the tighter caps, rather than reserving
/// twice against one account.
pub fn merge_lines(lines: &[(BudgetScope, Budget)]) -> Vec<HeldLine> {
    let mut held: Vec<HeldLine> = Vec::new();
    for (scope, budget) in lines {
        if budget.tokens.is_none() && budget.cost.is_none() {
            continue;
        }
        match held
            .iter_mut()
            .find(|h| h.scope == *scope && h.period == budget.period)
        {
            Some(h) => {
                h.tokens_cap = tighter(h.tokens_cap, budget.tokens);
                h.cost_cap = tighter(h.cost_cap, budget.cost);
            }
            None => held.push(HeldLine {
                scope: scope.clone(),
                period: budget.period,
                tokens_cap: budget.tokens,
                cost_cap: budget.cost,
                reserved: Spend::ZERO,
            }),
        }
    }
    held
}

/// The lower of two optional caps, `None` meaning uncapped.
fn tighter<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The front the gateway uses. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    store: Arc<dyn BudgetStore>,
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets").finish_non_exhaustive()
    }
}

impl Budgets {
    /// Budgets kept in this process.
    pub fn in_process() -> Budgets {
        Budgets::new(Arc::new(InProcessBudgets::new()))
    }

    /// Budgets backed by any [`BudgetStore`].
    pub fn new(store: Arc<dyn BudgetStore>) -> Budgets {
        Budgets { store }
    }

    /// The store behind this front.
    pub fn store(&self) -> &Arc<dyn BudgetStore> {
        &self.store
    }

    /// See [`BudgetStore::seed`].
    pub fn seed(&self, scope: &BudgetScope, period: BudgetPeriod, period_start: i64, spent: Spend) {
        self.store.seed(scope, period, period_start, spent);
    }

    /// See [`BudgetStore::reserve`]. The hold releases its reservation if dropped unsettled.
    pub fn reserve(
        &self,
        lines: &[(BudgetScope, Budget)],
        min: Spend,
        est: Spend,
        now_ms: i64,
    ) -> Result<BudgetHold, BudgetExceeded> {
        let res = if lines.is_empty() {
            Reservation::default()
        } else {
            self.store.reserve(lines, min, est, now_ms)?
        };
        Ok(BudgetHold {
            store: self.store.clone(),
            res,
        })
    }

    /// Same as [`BudgetHold::extend`].
    pub fn extend(&self, hold: &mut BudgetHold, so_far: Spend) -> Result<(), BudgetExceeded> {
        hold.extend(so_far)
    }

    /// Same as [`BudgetHold::settle`].
    pub fn settle(&self, hold: BudgetHold, actual: Spend) {
        hold.settle(actual);
    }

    /// Each budget line of `scope` now; see [`BudgetStore::status`].
    pub fn status(&self, scope: &BudgetScope) -> Vec<BudgetStatus> {
        self.store.status(scope, fairgate_types::now_millis())
    }

    /// Each budget line of `scope` at `now_ms`.
    pub fn status_at(&self, scope: &BudgetScope, now_ms: i64) -> Vec<BudgetStatus> {
        self.store.status(scope, now_ms)
    }

    /// Drop empty accounts; for a periodic housekeeping task.
    pub fn sweep(&self, now_ms: i64) {
        self.store.sweep(now_ms);
    }
}

/// One request's budget reservation. Settle it with the actual usage; dropping it unsettled
/// releases the reservation and charges nothing.
pub struct BudgetHold {
    store: Arc<dyn BudgetStore>,
    res: Reservation,
}

impl fmt::Debug for BudgetHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHold")
            .field("res", &self.res)
            .finish_non_exhaustive()
    }
}

impl BudgetHold {
    /// The lines held and how much on each.
    pub fn reservation(&self) -> &Reservation {
        &self.res
    }

    /// Mid-stream: grow the hold so it covers `so_far`; `Err` when a line cannot (the caller
    /// cuts a hard-capped stream).
    pub fn extend(&mut self, so_far: Spend) -> Result<(), BudgetExceeded> {
        self.extend_at(so_far, fairgate_types::now_millis())
    }

    /// [`BudgetHold::extend`] at an explicit time.
    pub fn extend_at(&mut self, so_far: Spend, now_ms: i64) -> Result<(), BudgetExceeded> {
        if self.res.lines.is_empty() {
            return Ok(());
        }
        self.store.extend(&mut self.res, so_far, now_ms)
    }

    /// End of request: release the reservation and charge `actual` (even past the cap: the
    /// usage already happened).
    pub fn settle(self, actual: Spend) {
        self.settle_at(actual, fairgate_types::now_millis());
    }

    /// [`BudgetHold::settle`] at an explicit time.
    pub fn settle_at(mut self, actual: Spend, now_ms: i64) {
        let res = std::mem::take(&mut self.res);
        self.store.settle(&res, actual, now_ms);
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        // Empty after settle (taken) and for requests without budgets.
        if !self.res.lines.is_empty() {
            self.store.release(&self.res);
        }
    }
}
