//! Sign-in throttling: cheap checks before any password hashing.
//!
//! The rule (also in README's portal section), per 15-minute window:
//!
//! 1. **Per client address**: 20 failed sign-ins, whatever the accounts, and that address is
//!    refused (429 with `Retry-After`) until its window ends, except for accounts that signed
//!    in from it before (so people behind one busy NAT are not shut out by a neighbour's
//!    guessing). IPv6 addresses count per /64, the block one client usually holds.
//! 2. **Per account and address**: 5 failed sign-ins for one account from one address, and
//!    that address may not try that account again until the window ends. Other addresses,
//!    the owner's included, are untouched: this is what stops guessing without handing a
//!    stranger a lockout.
//! 3. **Per account, from everywhere**: once an account has 10 failures in the window (a
//!    distributed guess), it is *slowed*, never locked: one attempt per 5 s across all
//!    addresses, except from addresses that signed in to it successfully before (the owner's
//!    usual places), which keep going at once.
//!
//! A successful sign-in clears that account-and-address counter and remembers the address
//! as good for the account. It does not clear the address's own counter: someone holding one
//! valid account could otherwise wipe their address's record between guesses at others.
//!
//! Memory is bounded: every map holds at most `max_entries` keys and drops the oldest first
//! (expired ones are the oldest). Accounts are kept as a SHA-256 prefix, so a flood of long
//! random e-mails costs a fixed size per entry.
//!
//! The rules live behind [`SignInThrottle`]: [`MemoryThrottle`] counts per replica,
//! [`SharedThrottle`] in Redis for all replicas under `[cluster]`.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Why and for how long an attempt is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub reason: ThrottleReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleReason {
    /// Too many failures from this address.
    Address,
    /// Too many failures for this account from this address.
    AccountFromAddress,
    /// The account is being guessed from many places: one attempt per interval.
    AccountSlowed,
}

/// Sign-in throttle. `account` is the normalised (trimmed, lower-cased) e-mail as typed,
/// whether or not such an account exists (so answers do not tell which exist).
pub trait SignInThrottle: Send + Sync {
    /// Before any expensive work: may this address try this account now? When the account is
    /// slowed this also takes its one slot.
    fn check<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, Result<(), Throttled>>;
    /// The attempt failed (wrong password, unknown or disabled account).
    fn record_failure<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()>;
    /// The attempt succeeded.
    fn record_success<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()>;
}

/// The numbers of the rule.
#[derive(Clone, Debug)]
pub struct ThrottleRules {
    pub window: Duration,
    pub address_failures: u32,
    pub pair_failures: u32,
    pub account_slow_after: u32,
    pub account_interval: Duration,
    /// Good addresses remembered per account.
    pub good_addresses: usize,
    /// Keys per map.
    pub max_entries: usize,
}

impl Default for ThrottleRules {
    fn default() -> Self {
        ThrottleRules {
            window: Duration::from_secs(15 * 60),
            address_failures: 20,
            pair_failures: 5,
            account_slow_after: 10,
            account_interval: Duration::from_secs(5),
            good_addresses: 8,
            max_entries: 10_000,
        }
    }
}

type AccountKey = [u8; 16];

fn account_key(account: &str) -> AccountKey {
    let d = Sha256::digest(account.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// The address as counted: IPv4 whole (IPv4-mapped IPv6 too), IPv6 by /64.
fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failures in a fixed window that starts at the first failure.
#[derive(Clone, Copy, Debug)]
struct Window {
    count: u32,
    start: Instant,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            count: 0,
            start: now,
        }
    }

    /// The count, or 0 once the window has ended.
    fn live(&self, now: Instant, len: Duration) -> u32 {
        if now.saturating_duration_since(self.start) >= len {
            0
        } else {
            self.count
        }
    }

    fn add(&mut self, now: Instant, len: Duration) {
        if self.live(now, len) == 0 {
            *self = Window {
                count: 1,
                start: now,
            };
        } else {
            self.count = self.count.saturating_add(1);
        }
    }

    fn retry_after(&self, now: Instant, len: Duration) -> Duration {
        (self.start + len).saturating_duration_since(now)
    }
}

/// A map with at most `cap` keys that drops the oldest-inserted first.
struct Bounded<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    next: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            cap: cap.max(1),
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    fn get_or_insert(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            while self.map.len() >= self.cap {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                // Skip queue entries of keys removed (or re-inserted) since.
                if self.map.get(&old).is_some_and(|(_, s)| *s == seq) {
                    self.map.remove(&old);
                }
            }
            let seq = self.next;
            self.next += 1;
            self.order.push_back((k.clone(), seq));
            self.map.insert(k.clone(), (make(), seq));
            // Removals leave stale queue entries; compact before they outgrow the map.
            if self.order.len() > 2 * self.cap {
                let map = &self.map;
                self.order
                    .retain(|(k, s)| map.get(k).is_some_and(|(_, cur)| cur == s));
            }
        }
        &mut self.map.get_mut(&k).expect("just inserted").0
    }

    fn remove(&mut self, k: &K) {
        self.map.remove(k);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct AccountState {
    failures: Window,
    /// When the last attempt was admitted while slowed.
    last_slow_attempt: Option<Instant>,
    good: VecDeque<IpAddr>,
}

struct Maps {
    addresses: Bounded<IpAddr, Window>,
    pairs: Bounded<(AccountKey, IpAddr), Window>,
    accounts: Bounded<AccountKey, AccountState>,
}

/// The in-memory [`SignInThrottle`]: per replica, bounded memory, a short lock per call.
pub struct MemoryThrottle {
    rules: ThrottleRules,
    maps: Mutex<Maps>,
    clock: Arc<dyn Fn() -> Instant + Send + Sync>,
}

impl Default for MemoryThrottle {
    fn default() -> Self {
        MemoryThrottle::new(ThrottleRules::default())
    }
}

impl MemoryThrottle {
    /// Uses tokio's clock, so tests with paused time can move it.
    pub fn new(rules: ThrottleRules) -> MemoryThrottle {
        Self::with_clock(rules, Arc::new(Instant::now))
    }

    pub fn with_clock(
        rules: ThrottleRules,
        clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    ) -> MemoryThrottle {
        let cap = rules.max_entries;
        MemoryThrottle {
            rules,
            maps: Mutex::new(Maps {
                addresses: Bounded::new(cap),
                pairs: Bounded::new(cap),
                accounts: Bounded::new(cap),
            }),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys held in each map (addresses, account-and-address pairs, accounts).
    pub fn tracked(&self) -> (usize, usize, usize) {
        let m = self.lock();
        (m.addresses.len(), m.pairs.len(), m.accounts.len())
    }

    fn check_now(&self, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        let r = &self.rules;
        let now = (self.clock)();
        let (acct, addr) = (account_key(account), address_key(addr));
        let mut m = self.lock();
        let known_good = m
            .accounts
            .get(&acct)
            .is_some_and(|a| a.good.contains(&addr));
        if let Some(w) = m.addresses.get(&addr).filter(|_| !known_good) {
            if w.live(now, r.window) >= r.address_failures {
                return Err(Throttled {
                    retry_after: w.retry_after(now, r.window),
                    reason: ThrottleReason::Address,
                });
            }
        }
        if let Some(w) = m.pairs.get(&(acct, addr)) {
            if w.live(now, r.window) >= r.pair_failures {
                return Err(Throttled {
                    retry_after: w.retry_after(now, r.window),
                    reason: ThrottleReason::AccountFromAddress,
                });
            }
        }
        let slowed = !known_good
            && m.accounts
                .get(&acct)
                .is_some_and(|a| a.failures.live(now, r.window) >= r.account_slow_after);
        if slowed {
            let a = m.accounts.get_or_insert(acct, || unreachable_account(now));
            if let Some(last) = a.last_slow_attempt {
                let next = last + r.account_interval;
                if next > now {
                    return Err(Throttled {
                        retry_after: next - now,
                        reason: ThrottleReason::AccountSlowed,
                    });
                }
            }
            a.last_slow_attempt = Some(now);
        }
        Ok(())
    }

    fn failure_now(&self, account: &str, addr: IpAddr) {
        let window = self.rules.window;
        let now = (self.clock)();
        let (acct, addr) = (account_key(account), address_key(addr));
        let mut m = self.lock();
        m.addresses
            .get_or_insert(addr, || Window::new(now))
            .add(now, window);
        m.pairs
            .get_or_insert((acct, addr), || Window::new(now))
            .add(now, window);
        m.accounts
            .get_or_insert(acct, || AccountState {
                failures: Window::new(now),
                last_slow_attempt: None,
                good: VecDeque::new(),
            })
            .failures
            .add(now, window);
    }

    fn success_now(&self, account: &str, addr: IpAddr) {
        let now = (self.clock)();
        let (acct, addr) = (account_key(account), address_key(addr));
        let keep = self.rules.good_addresses.max(1);
        let mut m = self.lock();
        m.pairs.remove(&(acct, addr));
        let a = m.accounts.get_or_insert(acct, || AccountState {
            failures: Window::new(now),
            last_slow_attempt: None,
            good: VecDeque::new(),
        });
        if !a.good.contains(&addr) {
            if a.good.len() >= keep {
                a.good.pop_front();
            }
            a.good.push_back(addr);
        }
    }
}

/// Only reached if the account vanished between two reads under one lock, which cannot
/// happen; a harmless empty state keeps it panic-free.
fn unreachable_account(now: Instant) -> AccountState {
    AccountState {
        failures: Window::new(now),
        last_slow_attempt: None,
        good: VecDeque::new(),
    }
}

impl SignInThrottle for MemoryThrottle {
    fn check<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, Result<(), Throttled>> {
        Box::pin(async move { self.check_now(account, addr) })
    }

    fn record_failure<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.failure_now(account, addr) })
    }

    fn record_success<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.success_now(account, addr) })
    }
}

/// The same rules with the counters in Redis (`[cluster]`), so a guesser gains nothing by
/// spreading attempts over replicas. Windows are Redis keys that expire with them; accounts
/// are keyed by the same SHA-256 prefix. When Redis does not answer, each call falls back to
/// this replica's own [`MemoryThrottle`], which keeps counting meanwhile.
pub struct SharedThrottle {
    rules: ThrottleRules,
    cluster: Arc<fairgate_cluster::Cluster>,
    local: MemoryThrottle,
}

/// KEYS: address, pair, account failures, good addresses, slow slot. ARGV: address limit,
/// pair limit, slow-after, interval ms, the address. Answers `{verdict, retry ms}`.
const CHECK_LUA: &str = r#"
local good = redis.call('LPOS', KEYS[4], ARGV[5]) ~= false
if not good then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
    return {'address', redis.call('PTTL', KEYS[1])}
  end
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then
  return {'pair', redis.call('PTTL', KEYS[2])}
end
if (not good) and tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[3]) then
  if redis.call('SET', KEYS[5], '1', 'PX', ARGV[4], 'NX') then
    return {'ok', 0}
  end
  return {'slowed', redis.call('PTTL', KEYS[5])}
end
return {'ok', 0}
"#;

/// KEYS: address, pair, account failures. ARGV: window ms. Each window starts at its first
/// failure.
const FAILURE_LUA: &str = r#"
for i = 1, 3 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return {'ok'}
"#;

/// KEYS: pair, good addresses. ARGV: the address, how many to keep, how long (ms).
const SUCCESS_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok'}
"#;

/// How long an account remembers the addresses it signed in from.
const GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

impl SharedThrottle {
    pub fn new(rules: ThrottleRules, cluster: Arc<fairgate_cluster::Cluster>) -> SharedThrottle {
        SharedThrottle {
            local: MemoryThrottle::new(rules.clone()),
            rules,
            cluster,
        }
    }

    /// The Redis keys for one attempt, and the address as text.
    fn keys(account: &str, addr: IpAddr) -> ([String; 5], String) {
        let acct: String = account_key(account)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let addr = address_key(addr).to_string();
        (
            [
                format!("signin:addr:{addr}"),
                format!("signin:pair:{acct}:{addr}"),
                format!("signin:acct:{acct}"),
                format!("signin:good:{acct}"),
                format!("signin:slow:{acct}"),
            ],
            addr,
        )
    }

    async fn check_shared(&self, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        let r = &self.rules;
        let (keys, a) = Self::keys(account, addr);
        let args = [
            r.address_failures.to_string(),
            r.pair_failures.to_string(),
            r.account_slow_after.to_string(),
            r.account_interval.as_millis().max(1).to_string(),
            a,
        ];
        let answer = match self.cluster.run_script(CHECK_LUA, &keys, &args).await {
            Ok(v) => v,
            Err(_) => return self.local.check_now(account, addr),
        };
        let retry = |v: &[String]| {
            let ms = v.get(1).and_then(|x| x.parse::<i64>().ok()).unwrap_or(1000);
            Duration::from_millis(ms.max(1) as u64)
        };
        let reason = match answer.first().map(String::as_str) {
            Some("address") => ThrottleReason::Address,
            Some("pair") => ThrottleReason::AccountFromAddress,
            Some("slowed") => ThrottleReason::AccountSlowed,
            _ => return Ok(()),
        };
        Err(Throttled {
            retry_after: retry(&answer),
            reason,
        })
    }

    async fn failure_shared(&self, account: &str, addr: IpAddr) {
        // Counted here too, so a Redis outage does not start everyone from zero.
        self.local.failure_now(account, addr);
        let (keys, _) = Self::keys(account, addr);
        let window = self.rules.window.as_millis().max(1).to_string();
        if let Err(e) = self
            .cluster
            .run_script(FAILURE_LUA, &keys[..3], &[window])
            .await
        {
            tracing::debug!(error = %e, "sign-in failure counted on this replica only");
        }
    }

    async fn success_shared(&self, account: &str, addr: IpAddr) {
        self.local.success_now(account, addr);
        let (keys, a) = Self::keys(account, addr);
        let args = [
            a,
            self.rules.good_addresses.max(1).to_string(),
            GOOD_FOR.as_millis().to_string(),
        ];
        let pair_and_good = [keys[1].clone(), keys[3].clone()];
        if let Err(e) = self
            .cluster
            .run_script(SUCCESS_LUA, &pair_and_good, &args)
            .await
        {
            tracing::debug!(error = %e, "sign-in success recorded on this replica only");
        }
    }
}

impl SignInThrottle for SharedThrottle {
    fn check<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, Result<(), Throttled>> {
        Box::pin(self.check_shared(account, addr))
    }

    fn record_failure<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()> {
        Box::pin(self.failure_shared(account, addr))
    }

    fn record_success<'a>(&'a self, account: &'a str, addr: IpAddr) -> BoxFuture<'a, ()> {
        Box::pin(self.success_shared(account, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn fail(t: &MemoryThrottle, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        t.check(account, addr).await?;
        t.record_failure(account, addr).await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn account_from_one_address_locks_for_the_window_only_there() {
        let t = MemoryThrottle::default();
        let (attacker, owner) = (ip("203.0.113.7"), ip("198.51.100.1"));
        for _ in 0..5 {
            fail(&t, "op@x", attacker).await.unwrap();
        }
        let e = t.check("op@x", attacker).await.unwrap_err();
        assert_eq!(e.reason, ThrottleReason::AccountFromAddress);
        assert_eq!(e.retry_after, Duration::from_secs(15 * 60));
        // The owner, elsewhere, is not affected.
        assert_eq!(t.check("op@x", owner).await, Ok(()));
        // Nor are other accounts from the attacker's address (up to its own limit).
        assert_eq!(t.check("other@x", attacker).await, Ok(()));
        advance(Duration::from_secs(10 * 60)).await;
        assert_eq!(
            t.check("op@x", attacker).await.unwrap_err().retry_after,
            Duration::from_secs(5 * 60)
        );
        advance(Duration::from_secs(5 * 60)).await;
        assert_eq!(t.check("op@x", attacker).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn address_limit_across_accounts_with_retry_after() {
        let t = MemoryThrottle::default();
        let a = ip("203.0.113.9");
        for i in 0..20 {
            fail(&t, &format!("random{i}@x"), a).await.unwrap();
            advance(Duration::from_secs(1)).await;
        }
        let e = t.check("fresh@x", a).await.unwrap_err();
        assert_eq!(e.reason, ThrottleReason::Address);
        assert_eq!(e.retry_after, Duration::from_secs(15 * 60 - 20));
        // Another address is fine; so is the same /64's neighbour for IPv6 only.
        assert_eq!(t.check("fresh@x", ip("203.0.113.10")).await, Ok(()));
        advance(Duration::from_secs(15 * 60)).await;
        assert_eq!(t.check("fresh@x", a).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guesser_behind_a_shared_address_does_not_shut_out_its_regulars() {
        let t = MemoryThrottle::default();
        let nat = ip("192.0.2.1");
        t.check("regular@x", nat).await.unwrap();
        t.record_success("regular@x", nat).await;
        for i in 0..20 {
            fail(&t, &format!("guess{i}@x"), nat).await.unwrap();
        }
        assert_eq!(
            t.check("newcomer@x", nat).await.unwrap_err().reason,
            ThrottleReason::Address
        );
        // Someone who signed in from here before still may, but not endlessly wrongly.
        assert_eq!(t.check("regular@x", nat).await, Ok(()));
        for _ in 0..5 {
            fail(&t, "regular@x", nat).await.unwrap();
        }
        assert_eq!(
            t.check("regular@x", nat).await.unwrap_err().reason,
            ThrottleReason::AccountFromAddress
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_counts_per_64() {
        let t = MemoryThrottle::default();
        for i in 0..20u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
            fail(&t, &format!("r{i}@x"), a).await.unwrap();
        }
        assert!(t.check("z@x", ip("2001:db8:1:2::ffff")).await.is_err());
        assert_eq!(t.check("z@x", ip("2001:db8:1:3::1")).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn attacker_from_other_addresses_cannot_keep_the_owner_out() {
        let t = MemoryThrottle::default();
        let owner_home = ip("198.51.100.1");
        // The owner has signed in from home before.
        t.check("op@x", owner_home).await.unwrap();
        t.record_success("op@x", owner_home).await;
        // A botnet: 4 failures from each of 50 addresses (under the per-pair limit).
        for n in 0..50u8 {
            let a = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, n));
            for _ in 0..4 {
                let _ = fail(&t, "op@x", a).await;
            }
        }
        // The account is slowed for strangers: one attempt per 5 s, then refused with a short wait.
        let stranger = ip("192.0.2.200");
        advance(Duration::from_secs(5)).await;
        assert_eq!(t.check("op@x", stranger).await, Ok(()));
        let e = t.check("op@x", stranger).await.unwrap_err();
        assert_eq!(e.reason, ThrottleReason::AccountSlowed);
        assert!(e.retry_after <= Duration::from_secs(5));
        // The owner from a known-good address goes straight through, again and again.
        for _ in 0..3 {
            assert_eq!(t.check("op@x", owner_home).await, Ok(()));
        }
        // From a new address the owner waits at most the interval, never the window.
        let owner_phone = ip("198.51.100.77");
        advance(Duration::from_secs(5)).await;
        assert_eq!(t.check("op@x", owner_phone).await, Ok(()));
        t.record_success("op@x", owner_phone).await;
        assert_eq!(t.check("op@x", owner_phone).await, Ok(()));
        // Even with the attacker retrying forever, the wait stays one interval.
        for _ in 0..100 {
            advance(Duration::from_secs(5)).await;
            let _ = fail(&t, "op@x", stranger).await;
        }
        let e = t.check("op@x", ip("198.51.100.99")).await;
        assert!(e.is_ok() || e.unwrap_err().retry_after <= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_pair_but_not_the_address() {
        let t = MemoryThrottle::default();
        let a = ip("203.0.113.50");
        for _ in 0..4 {
            fail(&t, "me@x", a).await.unwrap();
        }
        t.record_success("me@x", a).await;
        for _ in 0..5 {
            fail(&t, "me@x", a).await.unwrap();
        }
        assert!(t.check("me@x", a).await.is_err());
        // 9 failures on the address so far; its counter was not wiped.
        for i in 0..11 {
            fail(&t, &format!("o{i}@x"), a).await.unwrap();
        }
        assert_eq!(
            t.check("p@x", a).await.unwrap_err().reason,
            ThrottleReason::Address
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_under_random_accounts_and_addresses() {
        let t = MemoryThrottle::new(ThrottleRules {
            max_entries: 100,
            ..ThrottleRules::default()
        });
        for i in 0..5_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = fail(&t, &format!("{i}{}@x", "y".repeat(200)), a).await;
            let (x, y, z) = t.tracked();
            assert!(x <= 100 && y <= 100 && z <= 100, "{x} {y} {z}");
        }
        // The newest entries survive eviction: the last address still has its failure.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 4_999));
        assert!(t.lock().addresses.get(&last).is_some_and(|w| w.count == 1));
        // Successes (removals) do not let the eviction queue grow without bound.
        for i in 0..5_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            t.record_failure("s@x", a).await;
            t.record_success("s@x", a).await;
        }
        let m = t.lock();
        assert!(m.pairs.order.len() <= 200);
        assert!(m.addresses.order.len() <= 200);
    }
}
