//! Conformance suite: every scenario is written once and runs on SQLite and on PostgreSQL
//! (see `common` for how each backend is set up and isolated), so both backends are held to
//! exactly the same observable behaviour.

mod common;

use common::{eventually, Db};
use fairgate_store::migrate::MIGRATIONS;
use fairgate_store::{
    import_spill, spawn_ledger, spill_file_rows, LedgerConfig, LedgerError, Spend, SpendScope,
    Store, StoreError,
};
use fairgate_types::{
    AuditEntry, Budget, BudgetPeriod, Group, KeyId, KeyPolicy, KeyRecord, LedgerRow, Micros,
    OnLimit, Outcome, Priority, RateLimits, RequestId, Role, Session, SlurmJobRow, SuLine, Tenant,
    TenantPolicy, Unit, UsageRow, UsageSource, User, IDLE_TENANT,
};
use prometheus::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

conformance!(
    basics,
    tenant_crud,
    keys_crud,
    delete_tenant_revokes_keys,
    ledger_insert_is_idempotent,
    usage_sums_and_filters,
    requests_order_and_limit,
    large_batch_crosses_bind_limits,
    hostile_values_are_stored_safely,
    migrations_run_twice_and_concurrently,
    upgrade_from_v1_keeps_rows,
    policies_roundtrip,
    corrupt_policies_are_errors,
    upsert_tenant_creates_then_updates,
    groups_crud,
    ledger_pricing_fields_roundtrip,
    spend_by_tenant_and_key,
    spend_saturates_instead_of_failing,
    random_rows_roundtrip,
    writer_concurrent_records_then_flush,
    writer_commits_by_size_and_by_interval,
    writer_shutdown_drains,
    writer_spills_then_replays_when_database_recovers,
    writer_spills_when_database_is_down,
    writer_replays_spill_files_at_start_idempotently,
    retention_rollup_keeps_totals_exact,
    users_crud,
    user_conflicts,
    users_by_tenant,
    disabled_user_emails_lists_only_disabled,
    unknown_role_is_corrupt,
    sessions_lifecycle,
    audit_order_limit_and_paging,
    upgrade_from_v2_keeps_rows,
    runtime_backends_roundtrip,
    runs_beside_a_newer_expanded_schema,
    slurm_jobs_upsert_and_list,
    su_report_splits_job_days_by_tokens,
);

// ---------------------------------------------------------------------------------------------
// fixtures

fn tenant(name: &str, weight: u32, group: Option<&str>) -> Tenant {
    Tenant {
        name: name.into(),
        weight,
        group: group.map(Into::into),
        created_at: 1_700_000_000_000,
        policy: TenantPolicy::default(),
    }
}

fn key(id: &str, tenant: &str, created_at: i64) -> KeyRecord {
    KeyRecord {
        id: KeyId::from(id),
        tenant: tenant.into(),
        user: None,
        name: format!("key {id}"),
        models: None,
        secret_hash: format!("{:0>64}", id),
        expires_at: None,
        enabled: true,
        created_at,
        revoked_at: None,
        policy: KeyPolicy::default(),
    }
}

fn row(id: &str, ts: i64, tenant: Option<&str>, model: Option<&str>, p: u64, c: u64) -> LedgerRow {
    LedgerRow {
        id: RequestId::from(id),
        ts,
        tenant: tenant.map(Into::into),
        user: Some("alice".into()),
        key_id: Some(KeyId::from("k1")),
        model: model.map(Into::into),
        backend: Some("http://127.0.0.1:8000".into()),
        endpoint: "/v1/chat/completions".into(),
        stream: true,
        prompt_tokens: p,
        completion_tokens: c,
        cached_tokens: p / 2,
        reserved_tokens: p.saturating_add(c).saturating_add(10),
        usage_source: UsageSource::Upstream,
        status: 200,
        outcome: Outcome::Ok,
        error_class: None,
        queue_ms: 3,
        ttft_ms: Some(40),
        duration_ms: 900,
        cost: Micros(0),
        cache_hit: false,
        priority: Priority::Interactive,
        attempts: 1,
        unit: Unit::Tokens,
        units: p.saturating_add(c),
    }
}

/// A policy with every field set to something other than its default.
fn tenant_policy() -> TenantPolicy {
    TenantPolicy {
        limits: RateLimits {
            rpm: Some(60),
            tpm: Some(100_000),
            max_concurrent: Some(4),
        },
        budgets: vec![
            Budget {
                period: BudgetPeriod::Day,
                tokens: Some(1_000_000),
                cost: None,
            },
            Budget {
                period: BudgetPeriod::Month,
                tokens: None,
                cost: Some(Micros(25_000_000)),
            },
        ],
        max_queue: Some(32),
        max_wait_ms: Some(30_000),
        on_limit: Some(OnLimit::Reject),
        hard_cap: true,
        fallbacks: [("big".to_owned(), vec!["small".to_owned()])].into(),
        guardrails: fairgate_types::GuardrailPolicy {
            pii: Some(fairgate_types::GuardMode::Redact),
            injection: Some(fairgate_types::GuardMode::Block),
            ..Default::default()
        },
        mcp: [("files".to_owned(), vec!["add".to_owned(), "*".to_owned()])].into(),
    }
}

fn key_policy() -> KeyPolicy {
    KeyPolicy {
        limits: RateLimits {
            rpm: Some(5),
            ..RateLimits::default()
        },
        // u64::MAX must survive the JSON text (it would not as a BIGINT).
        budgets: vec![Budget {
            period: BudgetPeriod::Month,
            tokens: Some(u64::MAX),
            cost: Some(Micros(u64::MAX)),
        }],
        priority: Some(Priority::Batch),
        engine_priority: true,
        guardrails: fairgate_types::GuardrailPolicy {
            pii: Some(fairgate_types::GuardMode::Off),
            injection: None,
            ..Default::default()
        },
        mcp: Some([("files".to_owned(), vec!["echo".to_owned()])].into()),
    }
}

fn group(name: &str, weight: u32) -> Group {
    Group {
        name: name.into(),
        weight,
    }
}

fn usage_row(tenant: &str, model: &str, requests: u64, p: u64, c: u64, cached: u64) -> UsageRow {
    UsageRow {
        tenant: tenant.into(),
        model: model.into(),
        requests,
        prompt_tokens: p,
        completion_tokens: c,
        cached_tokens: cached,
        total_tokens: p + c,
    }
}

/// Newest first, the order `requests()` promises (ids compared by bytes).
fn newest_first(rows: &mut [LedgerRow]) {
    rows.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.id.0.cmp(&a.id.0)));
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let families = registry.gather();
    let family = families
        .iter()
        .find(|f| f.get_name() == name)
        .unwrap_or_else(|| panic!("metric {name} not registered"));
    let m = &family.get_metric()[0];
    match family.get_field_type() {
        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
        prometheus::proto::MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
        other => panic!("unexpected metric type {other:?}"),
    }
}

fn writer_config(db: &Db) -> LedgerConfig {
    LedgerConfig {
        batch_size: 64,
        flush_interval: Duration::from_millis(20),
        queue_capacity: 128,
        spill_dir: Some(db.dir.join("spill")),
        ..LedgerConfig::default()
    }
}

/// Opens a second, raw connection pool to the same database, for fault injection.
async fn raw_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("raw pool")
}

// ---------------------------------------------------------------------------------------------
// scenarios

async fn basics(db: Db) {
    assert_eq!(db.store.backend(), db.backend);
    db.store.ping().await.unwrap();
    assert_eq!(db.store.ledger_count().await.unwrap(), 0);
    assert!(db.store.list_tenants().await.unwrap().is_empty());
    assert!(db.store.list_keys(None).await.unwrap().is_empty());
    assert!(db.store.usage(None, None, None).await.unwrap().is_empty());
    assert!(db.store.requests(None, 10).await.unwrap().is_empty());
    db.store.insert_ledger_rows(&[]).await.unwrap();
    assert!(format!("{:?}", db.store).contains(db.backend));

    let clone = db.store.clone();
    db.store.close().await;
    assert!(matches!(clone.ping().await, Err(StoreError::Db(_))));
}

async fn tenant_crud(db: Db) {
    let s = &db.store;
    let alpha = tenant("alpha", 1, None);
    let beta = tenant("beta", 3, Some("eng"));
    // Upper case sorts before lower case in byte order, whatever the database locale says.
    let zed = tenant("Zed", 2, Some("ops"));
    for t in [&beta, &zed, &alpha] {
        s.create_tenant(t).await.unwrap();
    }
    match s.create_tenant(&tenant("alpha", 9, None)).await {
        Err(StoreError::Conflict(what)) => assert!(what.contains("alpha"), "{what}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(s.get_tenant("alpha").await.unwrap(), Some(alpha.clone()));
    assert_eq!(s.get_tenant("beta").await.unwrap(), Some(beta.clone()));
    assert_eq!(s.get_tenant("missing").await.unwrap(), None);
    assert_eq!(
        s.list_tenants().await.unwrap(),
        vec![zed.clone(), alpha.clone(), beta.clone()]
    );

    // update sets weight and group only; created_at is not touched.
    let mut changed = tenant("beta", 5, None);
    changed.created_at = 42;
    assert!(s.update_tenant(&changed).await.unwrap());
    let stored = s.get_tenant("beta").await.unwrap().unwrap();
    assert_eq!(
        stored,
        Tenant {
            created_at: beta.created_at,
            ..changed.clone()
        }
    );
    assert!(!s.update_tenant(&tenant("missing", 1, None)).await.unwrap());

    assert!(s.delete_tenant("alpha").await.unwrap());
    assert!(!s.delete_tenant("alpha").await.unwrap());
    assert!(!s.delete_tenant("missing").await.unwrap());
    assert_eq!(s.get_tenant("alpha").await.unwrap(), None);
    assert_eq!(s.list_tenants().await.unwrap().len(), 2);
    // The name is free again.
    s.create_tenant(&alpha).await.unwrap();
    assert_eq!(s.get_tenant("alpha").await.unwrap(), Some(alpha));

    // u32::MAX weights survive the BIGINT column.
    s.create_tenant(&tenant("heavy", u32::MAX, None))
        .await
        .unwrap();
    assert_eq!(
        s.get_tenant("heavy").await.unwrap().unwrap().weight,
        u32::MAX
    );
}

async fn keys_crud(db: Db) {
    let s = &db.store;
    s.create_tenant(&tenant("t", 1, None)).await.unwrap();
    s.create_tenant(&tenant("u", 1, None)).await.unwrap();

    let k1 = KeyRecord {
        user: Some("alice".into()),
        models: Some(vec!["llama-3".into(), "qwen \"2.5\"".into()]),
        expires_at: Some(1_800_000_000_000),
        ..key("k1", "t", 100)
    };
    let k2 = key("k2", "t", 200);
    let k3 = key("k3", "u", 150);
    for k in [&k2, &k1, &k3] {
        s.insert_key(k).await.unwrap();
    }
    assert_eq!(
        s.get_key(&KeyId::from("k1")).await.unwrap(),
        Some(k1.clone())
    );
    assert_eq!(
        s.get_key(&KeyId::from("k2")).await.unwrap(),
        Some(k2.clone())
    );
    assert_eq!(s.get_key(&KeyId::from("nope")).await.unwrap(), None);

    match s.insert_key(&key("k1", "u", 1)).await {
        Err(StoreError::Conflict(what)) => assert!(what.contains("k1"), "{what}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match s.insert_key(&key("k9", "ghost", 1)).await {
        Err(StoreError::NotFound(what)) => assert!(what.contains("ghost"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(s.get_key(&KeyId::from("k9")).await.unwrap(), None);

    // Oldest first.
    assert_eq!(
        s.list_keys(Some("t")).await.unwrap(),
        vec![k1.clone(), k2.clone()]
    );
    assert_eq!(s.list_keys(Some("u")).await.unwrap(), vec![k3.clone()]);
    assert!(s.list_keys(Some("nobody")).await.unwrap().is_empty());
    assert_eq!(
        s.list_keys(None).await.unwrap(),
        vec![k1.clone(), k3.clone(), k2.clone()]
    );

    // Every mutable field changes; tenant and created_at cannot.
    let updated = KeyRecord {
        id: k1.id.clone(),
        tenant: "u".into(),
        user: None,
        name: "renamed".into(),
        // An empty list (no model allowed) must stay distinct from None (every model).
        models: Some(vec![]),
        secret_hash: "f".repeat(64),
        expires_at: None,
        enabled: false,
        created_at: 999,
        revoked_at: Some(1_750_000_000_000),
        policy: key_policy(),
    };
    assert!(s.update_key(&updated).await.unwrap());
    let expected = KeyRecord {
        tenant: k1.tenant.clone(),
        created_at: k1.created_at,
        ..updated.clone()
    };
    assert_eq!(s.get_key(&k1.id).await.unwrap(), Some(expected.clone()));

    // And back: None models, a user, an expiry.
    let back = KeyRecord {
        models: None,
        user: Some("bob".into()),
        expires_at: Some(5),
        enabled: true,
        revoked_at: None,
        ..expected.clone()
    };
    assert!(s.update_key(&back).await.unwrap());
    assert_eq!(s.get_key(&k1.id).await.unwrap(), Some(back));

    assert!(!s.update_key(&key("ghost", "t", 1)).await.unwrap());
}

async fn delete_tenant_revokes_keys(db: Db) {
    let s = &db.store;
    s.create_tenant(&tenant("t", 1, None)).await.unwrap();
    s.create_tenant(&tenant("u", 1, None)).await.unwrap();
    let live = key("t-live", "t", 1);
    let already = KeyRecord {
        enabled: false,
        revoked_at: Some(123),
        ..key("t-old", "t", 2)
    };
    let other = key("u-live", "u", 3);
    for k in [&live, &already, &other] {
        s.insert_key(k).await.unwrap();
    }
    s.insert_ledger_rows(&[row("r1", 1000, Some("t"), Some("m"), 10, 5)])
        .await
        .unwrap();

    let before = fairgate_types::now_millis();
    assert!(s.delete_tenant("t").await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), None);

    let got = s.get_key(&live.id).await.unwrap().unwrap();
    assert!(!got.enabled);
    let revoked = got.revoked_at.expect("revoked_at set");
    assert!(revoked >= before, "revoked_at {revoked} < {before}");
    assert_eq!(
        KeyRecord {
            enabled: true,
            revoked_at: None,
            ..got
        },
        live
    );

    // An earlier revocation keeps its time.
    assert_eq!(s.get_key(&already.id).await.unwrap(), Some(already.clone()));
    // Other tenants are untouched.
    assert_eq!(s.get_key(&other.id).await.unwrap(), Some(other.clone()));
    // Keys stay listed under the old tenant name, revoked.
    assert_eq!(s.list_keys(Some("t")).await.unwrap().len(), 2);
    // The ledger keeps its rows.
    assert_eq!(s.ledger_count().await.unwrap(), 1);
    assert_eq!(
        s.usage(Some("t"), None, None).await.unwrap(),
        vec![usage_row("t", "m", 1, 10, 5, 5)]
    );

    // Re-creating the name does not resurrect the keys, and new keys work normally.
    s.create_tenant(&tenant("t", 1, None)).await.unwrap();
    assert!(!s.get_key(&live.id).await.unwrap().unwrap().enabled);
    s.insert_key(&key("t-new", "t", 4)).await.unwrap();
    assert!(
        s.get_key(&KeyId::from("t-new"))
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
}

async fn ledger_insert_is_idempotent(db: Db) {
    let s = &db.store;
    let batch: Vec<LedgerRow> = (0..10)
        .map(|i| row(&format!("r{i}"), 1000 + i, Some("t"), Some("m"), 10, 1))
        .collect();
    s.insert_ledger_rows(&batch).await.unwrap();
    s.insert_ledger_rows(&batch).await.unwrap();
    assert_eq!(s.ledger_count().await.unwrap(), 10);

    // A retried batch that overlaps: only the new half counts.
    let overlap: Vec<LedgerRow> = (5..15)
        .map(|i| row(&format!("r{i}"), 1000 + i, Some("t"), Some("m"), 10, 1))
        .collect();
    s.insert_ledger_rows(&overlap).await.unwrap();
    assert_eq!(s.ledger_count().await.unwrap(), 15);

    // Duplicates inside one batch count once; the first occurrence wins.
    let mut dup = row("d", 5000, Some("t"), Some("m"), 10, 1);
    let mut dup2 = dup.clone();
    dup2.prompt_tokens = 999_999;
    s.insert_ledger_rows(&[dup.clone(), dup2]).await.unwrap();
    assert_eq!(s.ledger_count().await.unwrap(), 16);
    assert_eq!(
        s.usage(None, None, None).await.unwrap(),
        vec![usage_row("t", "m", 16, 160, 16, 80)]
    );
    dup.prompt_tokens = 10;
    assert_eq!(s.requests(None, 1).await.unwrap(), vec![dup]);
}

async fn usage_sums_and_filters(db: Db) {
    let s = &db.store;
    let rows = vec![
        row("a1", 1000, Some("a"), Some("m1"), 100, 10),
        row("a2", 2000, Some("a"), Some("m1"), 200, 20),
        row("a3", 3000, Some("a"), Some("m2"), 300, 30),
        row("b1", 1000, Some("b"), Some("m1"), 1, 2),
        row("b2", 2999, Some("b"), Some("m1"), 3, 4),
        // Excluded from usage: no tenant (auth failed) or no model (rejected early).
        row("n1", 2000, None, Some("m1"), 5000, 5000),
        row("n2", 2000, Some("a"), None, 5000, 5000),
    ];
    s.insert_ledger_rows(&rows).await.unwrap();

    assert_eq!(
        s.usage(None, None, None).await.unwrap(),
        vec![
            usage_row("a", "m1", 2, 300, 30, 150),
            usage_row("a", "m2", 1, 300, 30, 150),
            usage_row("b", "m1", 2, 4, 6, 1),
        ]
    );
    assert_eq!(
        s.usage(Some("b"), None, None).await.unwrap(),
        vec![usage_row("b", "m1", 2, 4, 6, 1)]
    );
    // since is inclusive, until exclusive.
    assert_eq!(
        s.usage(None, Some(2000), Some(3000)).await.unwrap(),
        vec![
            usage_row("a", "m1", 1, 200, 20, 100),
            usage_row("b", "m1", 1, 3, 4, 1),
        ]
    );
    assert_eq!(
        s.usage(None, Some(3000), None).await.unwrap(),
        vec![usage_row("a", "m2", 1, 300, 30, 150)]
    );
    assert_eq!(
        s.usage(None, None, Some(1001)).await.unwrap(),
        vec![
            usage_row("a", "m1", 1, 100, 10, 50),
            usage_row("b", "m1", 1, 1, 2, 0),
        ]
    );
    assert_eq!(
        s.usage(Some("a"), Some(1500), Some(2500)).await.unwrap(),
        vec![usage_row("a", "m1", 1, 200, 20, 100)]
    );
    assert!(s.usage(None, Some(4000), None).await.unwrap().is_empty());
    assert!(s.usage(Some("zzz"), None, None).await.unwrap().is_empty());
    assert!(s
        .usage(None, Some(3000), Some(3000))
        .await
        .unwrap()
        .is_empty());
}

async fn requests_order_and_limit(db: Db) {
    let s = &db.store;
    let mut rows = vec![
        row("r-b", 2000, Some("t"), Some("m"), 1, 1),
        row("r-a", 2000, Some("t"), Some("m"), 1, 1),
        // Same ts: "a1" > "Z1" in byte order, whatever the database locale says.
        row("Z1", 3000, Some("u"), Some("m"), 1, 1),
        row("a1", 3000, Some("t"), Some("m"), 1, 1),
        row("old", 1000, None, None, 0, 0),
        row("new", 4000, Some("u"), None, 0, 0),
    ];
    s.insert_ledger_rows(&rows).await.unwrap();
    newest_first(&mut rows);
    let ids = |v: &[LedgerRow]| v.iter().map(|r| r.id.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&rows), ["new", "a1", "Z1", "r-b", "r-a", "old"]);

    assert_eq!(s.requests(None, 100).await.unwrap(), rows);
    assert_eq!(s.requests(None, 3).await.unwrap(), rows[..3].to_vec());
    assert!(s.requests(None, 0).await.unwrap().is_empty());
    assert_eq!(
        ids(&s.requests(Some("t"), 100).await.unwrap()),
        ["a1", "r-b", "r-a"]
    );
    assert_eq!(ids(&s.requests(Some("t"), 2).await.unwrap()), ["a1", "r-b"]);
    assert_eq!(
        ids(&s.requests(Some("u"), 100).await.unwrap()),
        ["new", "Z1"]
    );
    assert!(s.requests(Some("none"), 100).await.unwrap().is_empty());
    assert_eq!(s.requests(None, u32::MAX).await.unwrap().len(), 6);
}

async fn large_batch_crosses_bind_limits(db: Db) {
    let s = &db.store;
    // 5,000 rows x 23 columns = 115,000 parameters: more than SQLite's 32,766 and PostgreSQL's
    // 65,535 per statement, so this only works if inserts are chunked.
    let rows: Vec<LedgerRow> = (0..5_000u64)
        .map(|i| {
            let t = format!("t{}", i % 3);
            row(
                &format!("big-{i:05}"),
                i as i64,
                Some(&t),
                Some("m"),
                i,
                2 * i,
            )
        })
        .collect();
    s.insert_ledger_rows(&rows).await.unwrap();
    assert_eq!(s.ledger_count().await.unwrap(), 5_000);
    let usage = s.usage(None, None, None).await.unwrap();
    assert_eq!(usage.len(), 3);
    for (k, u) in usage.iter().enumerate() {
        let name = format!("t{k}");
        let mine: Vec<&LedgerRow> = rows
            .iter()
            .filter(|r| r.tenant.as_deref() == Some(name.as_str()))
            .collect();
        assert_eq!(u.tenant, name);
        assert_eq!(u.requests, mine.len() as u64);
        assert_eq!(
            u.prompt_tokens,
            mine.iter().map(|r| r.prompt_tokens).sum::<u64>()
        );
        assert_eq!(
            u.completion_tokens,
            mine.iter().map(|r| r.completion_tokens).sum::<u64>()
        );
        assert_eq!(
            u.cached_tokens,
            mine.iter().map(|r| r.cached_tokens).sum::<u64>()
        );
    }
    // Retrying the whole thing (one transaction) changes nothing.
    s.insert_ledger_rows(&rows).await.unwrap();
    assert_eq!(s.ledger_count().await.unwrap(), 5_000);
    let mut expected = rows.clone();
    newest_first(&mut expected);
    assert_eq!(s.requests(None, 5_000).await.unwrap(), expected);
}

async fn hostile_values_are_stored_safely(db: Db) {
    let s = &db.store;
    let mut r = row("nul", 1, Some("t"), Some("gpt\0evil"), u64::MAX, 0);
    r.endpoint = "/v1/\0".into();
    r.error_class = Some("x'); DROP TABLE ledger; --".into());
    r.ttft_ms = Some(u64::MAX);
    r.status = u16::MAX;
    r.cost = Micros(u64::MAX);
    s.insert_ledger_rows(std::slice::from_ref(&r))
        .await
        .unwrap();
    let got = s.requests(None, 1).await.unwrap().pop().unwrap();
    // NUL (which PostgreSQL cannot store) becomes U+FFFD on both backends ...
    assert_eq!(got.model.as_deref(), Some("gpt\u{FFFD}evil"));
    assert_eq!(got.endpoint, "/v1/\u{FFFD}");
    // ... counts past i64::MAX are clamped rather than failing the batch ...
    assert_eq!(got.prompt_tokens, i64::MAX as u64);
    assert_eq!(got.ttft_ms, Some(i64::MAX as u64));
    assert_eq!(got.cost, Micros(i64::MAX as u64));
    // ... and everything else is verbatim.
    assert_eq!(got.error_class, r.error_class);
    assert_eq!(got.status, u16::MAX);
    assert_eq!(s.ledger_count().await.unwrap(), 1);
    assert_eq!(
        s.usage(None, None, None).await.unwrap()[0].prompt_tokens,
        i64::MAX as u64
    );
}

async fn migrations_run_twice_and_concurrently(db: Db) {
    db.store.create_tenant(&tenant("t", 1, None)).await.unwrap();
    // Connecting again re-runs the migrator against an up-to-date database.
    let again = Store::connect(&db.url).await.unwrap();
    assert_eq!(
        again.get_tenant("t").await.unwrap(),
        Some(tenant("t", 1, None))
    );
    again.close().await;

    let raw = raw_pool(&db.url).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM fairgate_migrations")
        .fetch_all(&raw)
        .await
        .unwrap();
    let known: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, known);
    raw.close().await;

    // Several replicas starting at once on an empty database: all succeed, migrated once.
    let fresh = db.fresh_url().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = fresh.clone();
            tokio::spawn(async move { Store::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.unwrap().unwrap());
    }
    stores[0]
        .create_tenant(&tenant("x", 1, None))
        .await
        .unwrap();
    assert_eq!(stores[3].list_tenants().await.unwrap().len(), 1);
    let raw = raw_pool(&fresh).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fairgate_migrations")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(n, MIGRATIONS.len() as i64);
    raw.close().await;
    for s in stores {
        s.close().await;
    }
}

/// A database as a fairgate with only migration 1 left it, holding rows of that era.
async fn v1_database(db: &Db) -> String {
    let url = db.fresh_url().await;
    // The store creates SQLite's directory and file itself; this raw pool has to be told to.
    let raw_url = match url.strip_prefix("sqlite://") {
        Some(path) => {
            let parent = std::path::Path::new(path)
                .parent()
                .expect("file in a directory");
            std::fs::create_dir_all(parent).unwrap();
            format!("{url}?mode=rwc")
        }
        None => url.clone(),
    };
    let raw = raw_pool(&raw_url).await;
    sqlx::query(
        "CREATE TABLE fairgate_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&raw)
    .await
    .unwrap();
    sqlx::raw_sql(MIGRATIONS[0].sql)
        .execute(&raw)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO fairgate_migrations (version, applied_at) VALUES (1, 0)",
        "INSERT INTO tenants (name, weight, grp, created_at) VALUES ('old', 2, 'eng', 5)",
        "INSERT INTO keys (id, tenant, user_name, name, models_json, secret_hash, expires_at, \
         enabled, created_at, revoked_at) VALUES ('k-old', 'old', NULL, 'n', NULL, 'h', NULL, 1, 6, NULL)",
        "INSERT INTO ledger (id, ts, tenant, user_name, key_id, model, backend, endpoint, stream, \
         prompt_tokens, completion_tokens, cached_tokens, reserved_tokens, usage_source, status, \
         outcome, error_class, queue_ms, ttft_ms, duration_ms) VALUES ('r-old', 7, 'old', NULL, \
         'k-old', 'm', NULL, '/v1/completions', 0, 10, 20, 0, 30, 'upstream', 200, 'ok', NULL, \
         0, NULL, 100)",
    ] {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    raw.close().await;
    url
}

async fn upgrade_from_v1_keeps_rows(db: Db) {
    let url = v1_database(&db).await;
    let s = Store::connect(&url).await.unwrap();
    // Rows from before policies and prices read back with the defaults.
    assert_eq!(
        s.get_tenant("old").await.unwrap(),
        Some(Tenant {
            created_at: 5,
            ..tenant("old", 2, Some("eng"))
        })
    );
    let k = s.get_key(&KeyId::from("k-old")).await.unwrap().unwrap();
    assert_eq!(k.policy, KeyPolicy::default());
    let r = s.requests(None, 10).await.unwrap().pop().unwrap();
    assert_eq!(
        (r.cost, r.cache_hit, r.priority),
        (Micros(0), false, Priority::Interactive)
    );
    assert_eq!(
        s.spend(SpendScope::Key(&KeyId::from("k-old")), 0)
            .await
            .unwrap(),
        Spend {
            tokens: 30,
            cost: Micros(0)
        }
    );
    assert!(s.list_groups().await.unwrap().is_empty());
    // And the old rows take the new fields.
    let mut t = s.get_tenant("old").await.unwrap().unwrap();
    t.policy = tenant_policy();
    assert!(s.update_tenant(&t).await.unwrap());
    assert_eq!(s.get_tenant("old").await.unwrap(), Some(t));
    s.close().await;
}

/// What the policy column holds, read past the store.
async fn stored_policy(url: &str, table: &str, id_col: &str, id: &str) -> Option<String> {
    let raw = raw_pool(url).await;
    let sql = format!("SELECT policy_json FROM {table} WHERE {id_col} = $1");
    let v: Option<String> = sqlx::query_scalar(&sql)
        .bind(id)
        .fetch_one(&raw)
        .await
        .unwrap();
    raw.close().await;
    v
}

async fn policies_roundtrip(db: Db) {
    let s = &db.store;
    let t = Tenant {
        policy: tenant_policy(),
        ..tenant("t", 2, Some("eng"))
    };
    let plain = tenant("plain", 1, None);
    s.create_tenant(&t).await.unwrap();
    s.create_tenant(&plain).await.unwrap();
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(t.clone()));
    assert_eq!(
        s.list_tenants().await.unwrap(),
        vec![plain.clone(), t.clone()]
    );
    // The default policy is stored as NULL, so pre-policy rows and new plain rows agree.
    assert_eq!(
        stored_policy(&db.url, "tenants", "name", "plain").await,
        None
    );
    assert!(stored_policy(&db.url, "tenants", "name", "t")
        .await
        .is_some());

    // Update replaces the policy, to the default and back.
    let cleared = Tenant {
        policy: TenantPolicy::default(),
        ..t.clone()
    };
    assert!(s.update_tenant(&cleared).await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(cleared));
    assert_eq!(stored_policy(&db.url, "tenants", "name", "t").await, None);
    let partial = Tenant {
        policy: TenantPolicy {
            hard_cap: true,
            ..TenantPolicy::default()
        },
        ..t.clone()
    };
    assert!(s.update_tenant(&partial).await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(partial));

    // Keys: insert, get, list and update all carry the policy.
    let k = KeyRecord {
        policy: key_policy(),
        ..key("k1", "t", 10)
    };
    let k2 = key("k2", "t", 20);
    s.insert_key(&k).await.unwrap();
    s.insert_key(&k2).await.unwrap();
    assert_eq!(s.get_key(&k.id).await.unwrap(), Some(k.clone()));
    assert_eq!(
        s.list_keys(Some("t")).await.unwrap(),
        vec![k.clone(), k2.clone()]
    );
    assert_eq!(stored_policy(&db.url, "keys", "id", "k2").await, None);
    let batch_only = KeyRecord {
        policy: KeyPolicy {
            priority: Some(Priority::Batch),
            ..KeyPolicy::default()
        },
        ..k2.clone()
    };
    assert!(s.update_key(&batch_only).await.unwrap());
    assert_eq!(s.get_key(&k2.id).await.unwrap(), Some(batch_only));
    let cleared = KeyRecord {
        policy: KeyPolicy::default(),
        ..k.clone()
    };
    assert!(s.update_key(&cleared).await.unwrap());
    assert_eq!(s.get_key(&k.id).await.unwrap(), Some(cleared));
    assert_eq!(stored_policy(&db.url, "keys", "id", "k1").await, None);
}

async fn corrupt_policies_are_errors(db: Db) {
    let s = &db.store;
    s.create_tenant(&tenant("t", 1, None)).await.unwrap();
    s.create_tenant(&tenant("fine", 1, None)).await.unwrap();
    s.insert_key(&key("k1", "fine", 1)).await.unwrap();
    let raw = raw_pool(&db.url).await;
    // Valid JSON of the wrong shape (a field this version does not know) counts as corrupt too:
    // reading it as "no limits" would silently lift them.
    sqlx::query("UPDATE tenants SET policy_json = '{\"rpm\": 5}' WHERE name = 't'")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("UPDATE keys SET policy_json = 'not json' WHERE id = 'k1'")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;

    for result in [
        s.get_tenant("t").await.map(|_| ()),
        s.list_tenants().await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::Corrupt(what)) => assert!(what.contains("tenant `t`"), "{what}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    for result in [
        s.get_key(&KeyId::from("k1")).await.map(|_| ()),
        s.list_keys(None).await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::Corrupt(what)) => assert!(what.contains("key `k1`"), "{what}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // Other rows are unaffected, and writing a policy repairs the row.
    assert_eq!(
        s.get_tenant("fine").await.unwrap(),
        Some(tenant("fine", 1, None))
    );
    assert!(s.update_tenant(&tenant("t", 1, None)).await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(tenant("t", 1, None)));
}

async fn upsert_tenant_creates_then_updates(db: Db) {
    let s = &db.store;
    let first = Tenant {
        policy: tenant_policy(),
        ..tenant("t", 2, Some("eng"))
    };
    assert!(s.upsert_tenant(&first).await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(first.clone()));

    // Weight, group and policy change; created_at stays the first one.
    let second = Tenant {
        created_at: 42,
        policy: TenantPolicy {
            max_queue: Some(1),
            ..TenantPolicy::default()
        },
        ..tenant("t", 7, None)
    };
    assert!(!s.upsert_tenant(&second).await.unwrap());
    assert_eq!(
        s.get_tenant("t").await.unwrap(),
        Some(Tenant {
            created_at: first.created_at,
            ..second.clone()
        })
    );
    // Unchanged values: still an update, still fine.
    assert!(!s.upsert_tenant(&second).await.unwrap());
    assert_eq!(s.list_tenants().await.unwrap().len(), 1);

    // After a delete the name is created afresh, with the new created_at.
    assert!(s.delete_tenant("t").await.unwrap());
    assert!(s.upsert_tenant(&second).await.unwrap());
    assert_eq!(s.get_tenant("t").await.unwrap(), Some(second));

    // Concurrent upserts of one new name: exactly one creates it.
    let tasks: Vec<_> = (0..8u32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.upsert_tenant(&tenant("race", i + 1, None)).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap().unwrap());
    }
    assert_eq!(created, 1);
    assert!(s.get_tenant("race").await.unwrap().is_some());
}

/// Rolling upgrades go expand, then contract: a release only adds tables and nullable columns,
/// and drops one only releases later. Until the old pods are gone they run against the schema
/// the new ones migrated, so this binary must keep working on a database a newer fairgate has
/// expanded (a migration it does not know, new columns on its tables, a new table).
async fn runs_beside_a_newer_expanded_schema(db: Db) {
    let s = &db.store;
    s.create_tenant(&tenant("before", 1, None)).await.unwrap();
    s.insert_ledger_rows(&[row("r0", 1000, Some("before"), Some("m"), 10, 1)])
        .await
        .unwrap();
    let raw = raw_pool(&db.url).await;
    for ddl in [
        "ALTER TABLE tenants ADD COLUMN future_flag BIGINT NULL",
        "ALTER TABLE keys ADD COLUMN future_scope TEXT NULL",
        "ALTER TABLE ledger ADD COLUMN future_note TEXT NULL",
        "ALTER TABLE users ADD COLUMN future_locale TEXT NULL",
        "CREATE TABLE future_things (id TEXT PRIMARY KEY, body TEXT NULL)",
        "INSERT INTO fairgate_migrations (version, applied_at) VALUES (9999, 0)",
    ] {
        sqlx::query(ddl).execute(&raw).await.unwrap();
    }
    raw.close().await;

    // This binary starts on it (it warns that the schema is newer) and works as before.
    let old = Store::connect(&db.url).await.unwrap();
    assert_eq!(
        old.get_tenant("before").await.unwrap(),
        Some(tenant("before", 1, None))
    );
    old.create_tenant(&tenant("after", 2, None)).await.unwrap();
    old.insert_key(&key("k1", "after", 1_700_000_000_000))
        .await
        .unwrap();
    assert_eq!(
        old.get_key(&KeyId("k1".into())).await.unwrap(),
        Some(key("k1", "after", 1_700_000_000_000))
    );
    old.insert_ledger_rows(&[row("r1", 2000, Some("after"), Some("m"), 5, 2)])
        .await
        .unwrap();
    assert_eq!(old.ledger_count().await.unwrap(), 2);
    assert_eq!(old.requests(Some("after"), 10).await.unwrap().len(), 1);
    old.create_user(&user("u1", "u1@example.org", Some("after")))
        .await
        .unwrap();
    assert!(old.get_user("u1").await.unwrap().is_some());
    old.put_runtime_backend("m", "http://gpu:8000", None, "draining")
        .await
        .unwrap();
    assert_eq!(old.list_runtime_backends().await.unwrap().len(), 1);
    old.close().await;
}

async fn runtime_backends_roundtrip(db: Db) {
    let s = &db.store;
    assert!(s.list_runtime_backends().await.unwrap().is_empty());
    let cfg = r#"{"url":"http://gpu-b:8000","max_in_flight":4}"#;
    s.put_runtime_backend("m", "http://gpu-b:8000", Some(cfg), "active")
        .await
        .unwrap();
    // A state change keeps the stored config; a config-file backend stores its state only.
    s.put_runtime_backend("m", "http://gpu-b:8000", None, "draining")
        .await
        .unwrap();
    s.put_runtime_backend("m", "http://gpu-a:8000", None, "removed")
        .await
        .unwrap();
    let rows = s.list_runtime_backends().await.unwrap();
    let view: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.model.as_str(),
                r.url.as_str(),
                r.config.as_str(),
                r.state.as_str(),
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            ("m", "http://gpu-a:8000", "", "removed"),
            ("m", "http://gpu-b:8000", cfg, "draining"),
        ]
    );
    // Re-adding replaces the config and the state.
    let cfg2 = r#"{"url":"http://gpu-a:8000","max_in_flight":2}"#;
    s.put_runtime_backend("m", "http://gpu-a:8000", Some(cfg2), "active")
        .await
        .unwrap();
    let rows = s.list_runtime_backends().await.unwrap();
    assert_eq!(rows[0].config, cfg2);
    assert_eq!(rows[0].state, "active");
    assert!(rows.iter().all(|r| r.updated_at > 0));
}

async fn groups_crud(db: Db) {
    let s = &db.store;
    assert!(s.list_groups().await.unwrap().is_empty());
    assert_eq!(s.get_group("eng").await.unwrap(), None);

    assert!(s.upsert_group(&group("eng", 3)).await.unwrap());
    // Upper case sorts first in byte order, whatever the database locale says.
    assert!(s.upsert_group(&group("Ops", 1)).await.unwrap());
    assert!(s.upsert_group(&group("big", u32::MAX)).await.unwrap());
    assert!(!s.upsert_group(&group("eng", 5)).await.unwrap());
    assert_eq!(s.get_group("eng").await.unwrap(), Some(group("eng", 5)));
    assert_eq!(
        s.get_group("big").await.unwrap(),
        Some(group("big", u32::MAX))
    );
    assert_eq!(
        s.list_groups().await.unwrap(),
        vec![group("Ops", 1), group("big", u32::MAX), group("eng", 5)]
    );

    assert!(s.delete_group("eng").await.unwrap());
    assert!(!s.delete_group("eng").await.unwrap());
    assert!(!s.delete_group("missing").await.unwrap());
    assert_eq!(s.get_group("eng").await.unwrap(), None);
    assert_eq!(
        s.list_groups().await.unwrap(),
        vec![group("Ops", 1), group("big", u32::MAX)]
    );
    // The name is free again.
    assert!(s.upsert_group(&group("eng", 2)).await.unwrap());
    assert_eq!(s.get_group("eng").await.unwrap(), Some(group("eng", 2)));
}

async fn ledger_pricing_fields_roundtrip(db: Db) {
    let s = &db.store;
    let cut = LedgerRow {
        outcome: Outcome::CutOff,
        error_class: Some("budget_exhausted".into()),
        cost: Micros(1_234_567),
        priority: Priority::Batch,
        ..row("cut", 3000, Some("t"), Some("m"), 100, 50)
    };
    let hit = LedgerRow {
        cache_hit: true,
        cost: Micros(0),
        ..row("hit", 2000, Some("t"), Some("m"), 100, 50)
    };
    let fresh = LedgerRow::new(RequestId::from("new"), 1000, "/v1/chat/completions".into());
    s.insert_ledger_rows(&[cut.clone(), hit.clone(), fresh.clone()])
        .await
        .unwrap();
    assert_eq!(s.requests(None, 10).await.unwrap(), vec![cut, hit, fresh]);
}

async fn spend_by_tenant_and_key(db: Db) {
    let s = &db.store;
    let k1 = KeyId::from("k1");
    let k2 = KeyId::from("k2");
    let priced = |id: &str, ts: i64, t: &str, k: &KeyId, p: u64, c: u64, cost: u64| LedgerRow {
        key_id: Some(k.clone()),
        cost: Micros(cost),
        ..row(id, ts, Some(t), Some("m"), p, c)
    };
    s.insert_ledger_rows(&[
        priced("a1", 1000, "a", &k1, 100, 10, 5),
        priced("a2", 2000, "a", &k2, 200, 20, 7),
        LedgerRow {
            outcome: Outcome::CutOff,
            ..priced("a3", 3000, "a", &k1, 1, 2, 3)
        },
        priced("b1", 2500, "b", &KeyId::from("kb"), 1_000, 1_000, 1_000),
        // No model (rejected early): still spend, unlike `usage`.
        LedgerRow {
            model: None,
            ..priced("a4", 2500, "a", &k2, 4, 0, 0)
        },
    ])
    .await
    .unwrap();
    let spend = |tokens: u64, cost: u64| Spend {
        tokens,
        cost: Micros(cost),
    };
    let tenant = |t: &'static str, since: i64| {
        let s = s.clone();
        async move { s.spend(SpendScope::Tenant(t), since).await.unwrap() }
    };
    assert_eq!(tenant("a", i64::MIN).await, spend(337, 15));
    assert_eq!(tenant("a", 0).await, spend(337, 15));
    // `since` is inclusive.
    assert_eq!(tenant("a", 2000).await, spend(227, 10));
    assert_eq!(tenant("a", 2001).await, spend(7, 3));
    assert_eq!(tenant("a", 3001).await, Spend::default());
    assert_eq!(tenant("b", 0).await, spend(2_000, 1_000));
    assert_eq!(tenant("nobody", 0).await, Spend::default());

    assert_eq!(
        s.spend(SpendScope::Key(&k1), 0).await.unwrap(),
        spend(113, 8)
    );
    assert_eq!(
        s.spend(SpendScope::Key(&k1), 1001).await.unwrap(),
        spend(3, 3)
    );
    assert_eq!(
        s.spend(SpendScope::Key(&k2), 2000).await.unwrap(),
        spend(224, 7)
    );
    assert_eq!(
        s.spend(SpendScope::Key(&KeyId::from("none")), 0)
            .await
            .unwrap(),
        Spend::default()
    );
}

async fn spend_saturates_instead_of_failing(db: Db) {
    let s = &db.store;
    // Each count is clamped to i64::MAX on write; a plain SQL SUM of two would overflow.
    let huge = |id: &str| LedgerRow {
        cost: Micros(u64::MAX),
        ..row(id, 1, Some("t"), Some("m"), u64::MAX, u64::MAX)
    };
    s.insert_ledger_rows(&[huge("h1"), huge("h2")])
        .await
        .unwrap();
    let got = s.spend(SpendScope::Tenant("t"), 0).await.unwrap();
    // Exact while it fits in u64 (2 x (2^63 - 1)), saturated beyond.
    assert_eq!(got.cost, Micros(u64::MAX - 1));
    assert_eq!(got.tokens, u64::MAX);
    s.insert_ledger_rows(&[huge("h3")]).await.unwrap();
    assert_eq!(
        s.spend(SpendScope::Key(&KeyId::from("k1")), 0)
            .await
            .unwrap(),
        Spend {
            tokens: u64::MAX,
            cost: Micros(u64::MAX)
        }
    );
}

/// Seeded random strings that stress quoting and encoding (no NUL: see the hostile test).
fn random_text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", "0", " ", "'", "\"", "\\", "%", "$1", "?", "é", "ß", "日本", "🦀", "\n", "\t",
        "-", "_", "/", "{}", "NULL", ";",
    ];
    let len = rng.gen_range(0..12);
    (0..len)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

fn random_opt(rng: &mut StdRng) -> Option<String> {
    rng.gen_bool(0.7).then(|| random_text(rng))
}

fn random_row(rng: &mut StdRng, i: usize) -> LedgerRow {
    const OUTCOMES: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Cancelled,
        Outcome::UpstreamError,
        Outcome::UpstreamRejected,
        Outcome::Rejected,
        Outcome::CutOff,
        Outcome::AuthFailed,
    ];
    const SOURCES: [UsageSource; 3] = [
        UsageSource::Upstream,
        UsageSource::Counted,
        UsageSource::None,
    ];
    let tokens = |rng: &mut StdRng| -> u64 {
        match rng.gen_range(0..4) {
            0 => 0,
            1 => rng.gen_range(0..10_000),
            2 => i64::MAX as u64,
            _ => rng.gen_range(0..=i64::MAX as u64),
        }
    };
    LedgerRow {
        // Unique by the suffix; the random prefix exercises ordering of odd strings.
        id: RequestId(format!("{}#{i}", random_text(rng))),
        // Few distinct timestamps, so ties are broken by id often.
        ts: match rng.gen_range(0..3) {
            0 => rng.gen_range(0..5),
            1 => i64::MIN + rng.gen_range(0..2),
            _ => rng.gen(),
        },
        tenant: random_opt(rng),
        user: random_opt(rng),
        key_id: random_opt(rng).map(KeyId),
        model: random_opt(rng),
        backend: random_opt(rng),
        endpoint: random_text(rng),
        stream: rng.gen(),
        prompt_tokens: tokens(rng),
        completion_tokens: tokens(rng),
        cached_tokens: tokens(rng),
        reserved_tokens: tokens(rng),
        usage_source: SOURCES[rng.gen_range(0..SOURCES.len())],
        status: rng.gen(),
        outcome: OUTCOMES[rng.gen_range(0..OUTCOMES.len())],
        error_class: random_opt(rng),
        queue_ms: tokens(rng),
        ttft_ms: rng.gen_bool(0.5).then(|| tokens(rng)),
        duration_ms: tokens(rng),
        cost: Micros(tokens(rng)),
        cache_hit: rng.gen(),
        priority: Priority::ALL[rng.gen_range(0..Priority::ALL.len())],
        attempts: rng.gen(),
        unit: Unit::ALL[rng.gen_range(0..Unit::ALL.len())],
        units: tokens(rng),
    }
}

async fn random_rows_roundtrip(db: Db) {
    let s = &db.store;
    for seed in [1u64, 2, 3] {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows: Vec<LedgerRow> = (0..300).map(|i| random_row(&mut rng, i)).collect();
        // Random batch boundaries.
        let mut rest = &rows[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len().min(97));
            s.insert_ledger_rows(&rest[..n]).await.unwrap();
            rest = &rest[n..];
        }
        let all = s.requests(None, 1_000).await.unwrap();
        let mut expected = rows.clone();
        newest_first(&mut expected);
        assert_eq!(all.len(), expected.len(), "seed {seed}");
        for (got, want) in all.iter().zip(&expected) {
            assert_eq!(got, want, "seed {seed}");
        }
        // The tenant filter and limit select exactly the matching prefix.
        let t = expected
            .iter()
            .find_map(|r| r.tenant.clone())
            .expect("some row has a tenant");
        let mine: Vec<LedgerRow> = expected
            .iter()
            .filter(|r| r.tenant.as_ref() == Some(&t))
            .take(5)
            .cloned()
            .collect();
        assert_eq!(s.requests(Some(&t), 5).await.unwrap(), mine, "seed {seed}");

        // Clean slate for the next seed.
        let raw = raw_pool(&db.url).await;
        sqlx::query("DELETE FROM ledger")
            .execute(&raw)
            .await
            .unwrap();
        raw.close().await;
    }
}

async fn writer_concurrent_records_then_flush(db: Db) {
    let registry = Registry::new();
    let (handle, writer) = spawn_ledger(db.store.clone(), writer_config(&db), &registry).unwrap();
    let tasks: Vec<_> = (0..10u64)
        .map(|t| {
            let handle = handle.clone();
            tokio::spawn(async move {
                for i in 0..100u64 {
                    let tenant = format!("t{t}");
                    let r = row(
                        &format!("w{t}-{i}"),
                        i as i64,
                        Some(&tenant),
                        Some("m"),
                        i,
                        1,
                    );
                    // Never waits: the queue (128 rows) overflows into the spill file.
                    handle.record(r);
                    assert!(
                        handle.queued() <= 128 + 2 * 64,
                        "queue plus two batches at most"
                    );
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    handle.flush().await.unwrap();
    assert_eq!(db.store.ledger_count().await.unwrap(), 1_000);
    assert_eq!(handle.queued(), 0);
    let usage = db.store.usage(None, None, None).await.unwrap();
    let expected: Vec<UsageRow> = (0..10)
        .map(|t| {
            usage_row(
                &format!("t{t}"),
                "m",
                100,
                4_950,
                100,
                (0..100u64).map(|i| i / 2).sum(),
            )
        })
        .collect();
    assert_eq!(usage, expected);
    // Every row went one way: committed from the queue, or spilled and replayed (the flush
    // replays what overflowed before answering).
    let written = metric(&registry, "fairgate_ledger_rows_written_total");
    let spilled = metric(&registry, "fairgate_ledger_rows_spilled_total");
    let replayed = metric(&registry, "fairgate_ledger_rows_replayed_total");
    assert_eq!(written + replayed, 1_000.0);
    assert_eq!(spilled, replayed);
    assert_eq!(metric(&registry, "fairgate_ledger_queue_depth"), 0.0);
    assert_eq!(metric(&registry, "fairgate_ledger_spill_pending_rows"), 0.0);
    assert_eq!(metric(&registry, "fairgate_ledger_spill_files"), 0.0);
    assert_eq!(metric(&registry, "fairgate_ledger_write_errors_total"), 0.0);
    assert_eq!(metric(&registry, "fairgate_database_up"), 1.0);
    assert!(metric(&registry, "fairgate_ledger_batch_seconds") >= 1.0);
    writer.shutdown().await.unwrap();
}

async fn writer_commits_by_size_and_by_interval(db: Db) {
    // By size: with an interval that never fires, full batches still commit on their own.
    let registry = Registry::new();
    let cfg = LedgerConfig {
        batch_size: 10,
        flush_interval: Duration::from_secs(3600),
        ..writer_config(&db)
    };
    let (handle, writer) = spawn_ledger(db.store.clone(), cfg, &registry).unwrap();
    for i in 0..25 {
        handle.record(row(&format!("s{i}"), i, Some("t"), Some("m"), 1, 1));
    }
    let store = db.store.clone();
    // (The writer updates its count just after the database confirms, so wait for both.)
    eventually("two full batches committed", || {
        let store = store.clone();
        let queued = handle.queued();
        async move { store.ledger_count().await.unwrap() == 20 && queued == 5 }
    })
    .await;
    // The partial batch waits for its interval (an hour): it is what a crash would lose now.
    assert_eq!(db.store.ledger_count().await.unwrap(), 20);
    assert_eq!(handle.queued(), 5);
    assert_eq!(metric(&registry, "fairgate_ledger_queue_depth"), 5.0);
    handle.flush().await.unwrap();
    assert_eq!(db.store.ledger_count().await.unwrap(), 25);
    assert_eq!(handle.queued(), 0);
    writer.shutdown().await.unwrap();

    // By interval: a lone row commits without any flush.
    let registry = Registry::new();
    let cfg = LedgerConfig {
        batch_size: 1_000,
        flush_interval: Duration::from_millis(20),
        ..writer_config(&db)
    };
    let (handle, writer) = spawn_ledger(db.store.clone(), cfg, &registry).unwrap();
    handle.record(row("lone", 99, Some("t"), Some("m"), 1, 1));
    eventually("the lone row committed by the interval", || {
        let store = store.clone();
        async move { store.ledger_count().await.unwrap() == 26 }
    })
    .await;
    eventually("queue depth back to zero", || {
        let q = handle.queued();
        async move { q == 0 }
    })
    .await;
    writer.shutdown().await.unwrap();
}

async fn writer_shutdown_drains(db: Db) {
    let registry = Registry::new();
    let cfg = LedgerConfig {
        batch_size: 1_000,
        flush_interval: Duration::from_secs(3600),
        queue_capacity: 10_000,
        spill_dir: Some(db.dir.join("spill")),
        ..LedgerConfig::default()
    };
    let (handle, writer) = spawn_ledger(db.store.clone(), cfg, &registry).unwrap();
    for i in 0..2_500 {
        handle.record(row(&format!("d{i}"), i, Some("t"), Some("m"), 2, 3));
    }
    // No flush: shutdown alone must commit everything still queued.
    writer.shutdown().await.unwrap();
    assert_eq!(db.store.ledger_count().await.unwrap(), 2_500);
    assert_eq!(
        db.store.usage(None, None, None).await.unwrap(),
        vec![usage_row("t", "m", 2_500, 5_000, 7_500, 2_500)]
    );
    assert_eq!(handle.queued(), 0);
    assert_eq!(
        metric(&registry, "fairgate_ledger_rows_written_total"),
        2_500.0
    );

    assert!(!db.dir.join("spill").exists(), "nothing may be spilled");

    // After shutdown the queue is closed; a late row (a request finishing after the drain) is
    // not lost: it goes to the spill file, replayed at the next start.
    assert!(matches!(handle.flush().await, Err(LedgerError::Closed)));
    let late = row("late", 1, Some("t"), Some("m"), 1, 1);
    handle.record(late.clone());
    assert_eq!(handle.queued(), 0);
    assert_eq!(db.store.ledger_count().await.unwrap(), 2_500);
    assert_eq!(spilled_rows(&db.dir.join("spill")), vec![late]);
}

/// Every row in the spill files of `dir`, oldest file first.
fn spilled_rows(dir: &std::path::Path) -> Vec<LedgerRow> {
    spill_files(dir)
        .iter()
        .flat_map(|p| spill_file_rows(p).unwrap())
        .collect()
}

fn spill_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| fairgate_store::is_spill_file(p))
        .collect();
    files.sort();
    files
}

async fn writer_spills_then_replays_when_database_recovers(db: Db) {
    let registry = Registry::new();
    let (handle, writer) = spawn_ledger(db.store.clone(), writer_config(&db), &registry).unwrap();
    let raw = raw_pool(&db.url).await;
    // Make every commit fail, on both backends, without touching the writer's pool.
    sqlx::query("ALTER TABLE ledger RENAME TO ledger_away")
        .execute(&raw)
        .await
        .unwrap();
    let rows: Vec<LedgerRow> = (0..20)
        .map(|i| row(&format!("x{i}"), i, Some("t"), Some("m"), 1, 1))
        .collect();
    for r in &rows {
        handle.record(r.clone());
    }
    // The flush does not wait for the database: it learns the rows are on disk.
    match handle.flush().await {
        Err(LedgerError::Spilled { rows: n, .. }) => assert_eq!(n, 20),
        other => panic!("expected Spilled, got {other:?}"),
    }
    assert_eq!(handle.queued(), 0, "nothing held in memory while failing");
    assert!(metric(&registry, "fairgate_ledger_write_errors_total") >= 1.0);
    assert_eq!(
        metric(&registry, "fairgate_ledger_rows_spilled_total"),
        20.0
    );
    assert_eq!(
        metric(&registry, "fairgate_ledger_spill_pending_rows"),
        20.0
    );
    assert_eq!(spilled_rows(&db.dir.join("spill")), rows);

    sqlx::query("ALTER TABLE ledger_away RENAME TO ledger")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let store = db.store.clone();
    eventually(
        "the spilled rows replayed once the database is back",
        || {
            let store = store.clone();
            async move { store.ledger_count().await.unwrap() == 20 }
        },
    )
    .await;
    eventually("the spill file removed after its commit", || {
        let gone = spill_files(&db.dir.join("spill")).is_empty();
        async move { gone }
    })
    .await;
    handle.flush().await.unwrap();
    assert_eq!(
        metric(&registry, "fairgate_ledger_rows_replayed_total"),
        20.0
    );
    assert_eq!(metric(&registry, "fairgate_ledger_spill_pending_rows"), 0.0);
    assert_eq!(metric(&registry, "fairgate_ledger_spill_files"), 0.0);
    assert_eq!(metric(&registry, "fairgate_database_up"), 1.0);
    let mut expected = rows.clone();
    newest_first(&mut expected);
    assert_eq!(db.store.requests(None, 100).await.unwrap(), expected);
    writer.shutdown().await.unwrap();
}

async fn writer_spills_when_database_is_down(db: Db) {
    // A store whose pool is closed fails every write, the same way on both backends.
    let dead = Store::connect(&db.url).await.unwrap();
    dead.close().await;
    let registry = Registry::new();
    let spill_dir = db.dir.join("spill");
    let cfg = LedgerConfig {
        batch_size: 8,
        queue_capacity: 16,
        ..writer_config(&db)
    };
    let (handle, writer) = spawn_ledger(dead, cfg, &registry).unwrap();
    let rows: Vec<LedgerRow> = (0..500)
        .map(|i| row(&format!("s{i:03}"), i, Some("t"), Some("m"), 7, 1))
        .collect();
    for r in &rows {
        handle.record(r.clone());
        // Memory stays bounded: the queue and at most two batches; the rest is on disk.
        assert!(handle.queued() <= 16 + 2 * 8, "queued {}", handle.queued());
    }
    eventually("the writer noticed the database is down", || {
        let up = metric(&registry, "fairgate_database_up");
        async move { up == 0.0 }
    })
    .await;
    let flushed = handle.flush().await;
    assert!(
        matches!(flushed, Err(LedgerError::Spilled { .. })),
        "{flushed:?}"
    );
    // Known down: shutdown spills at once whatever is left, and says so if anything was.
    match writer
        .shutdown_with_timeout(Duration::from_secs(3600))
        .await
    {
        Ok(()) => {}
        Err(LedgerError::Spilled { path, .. }) => {
            assert_eq!(path.parent(), Some(spill_dir.as_path()));
        }
        other => panic!("expected Ok or Spilled, got {other:?}"),
    }
    assert_eq!(handle.queued(), 0);
    assert_eq!(
        metric(&registry, "fairgate_ledger_rows_spilled_total"),
        500.0
    );
    assert_eq!(metric(&registry, "fairgate_ledger_rows_written_total"), 0.0);
    let files = spill_files(&spill_dir);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("ledger-spill-") && name.ends_with(".jsonl"),
            "{name}"
        );
    }
    // Every row is on disk exactly once (order across queue overflow and batches may differ).
    let mut on_disk = spilled_rows(&spill_dir);
    on_disk.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    assert_eq!(on_disk, rows);

    // The files replay (idempotently) into a live store.
    for f in &files {
        import_spill(&db.store, f).await.unwrap();
        import_spill(&db.store, f).await.unwrap();
    }
    assert_eq!(db.store.ledger_count().await.unwrap(), 500);
}

async fn writer_replays_spill_files_at_start_idempotently(db: Db) {
    let spill_dir = db.dir.join("spill");
    let rows: Vec<LedgerRow> = (0..300)
        .map(|i| row(&format!("p{i:03}"), i, Some("t"), Some("m"), 2, 3))
        .collect();
    // An earlier run spilled everything at shutdown (its database was down).
    {
        let dead = Store::connect(&db.url).await.unwrap();
        dead.close().await;
        let (handle, writer) = spawn_ledger(dead, writer_config(&db), &Registry::new()).unwrap();
        for r in &rows {
            handle.record(r.clone());
        }
        let _ = writer
            .shutdown_with_timeout(Duration::from_millis(100))
            .await;
    }
    let files = spill_files(&spill_dir);
    assert!(!files.is_empty());
    let copies: Vec<(std::path::PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).unwrap()))
        .collect();
    // Some of the rows did reach the database (a commit whose answer was lost).
    db.store.insert_ledger_rows(&rows[..50]).await.unwrap();

    for round in 0..2 {
        let registry = Registry::new();
        let (handle, writer) =
            spawn_ledger(db.store.clone(), writer_config(&db), &registry).unwrap();
        assert_eq!(handle.spill_pending(), 300, "round {round}");
        eventually("the left-over spill files replayed at start", || {
            let gone = spill_files(&spill_dir).is_empty();
            async move { gone }
        })
        .await;
        handle.flush().await.unwrap();
        assert_eq!(db.store.ledger_count().await.unwrap(), 300, "round {round}");
        assert_eq!(
            db.store.usage(None, None, None).await.unwrap(),
            vec![usage_row("t", "m", 300, 600, 900, 300)]
        );
        assert_eq!(metric(&registry, "fairgate_ledger_spill_pending_rows"), 0.0);
        writer.shutdown().await.unwrap();
        // Replaying the very same files again adds nothing.
        for (path, bytes) in &copies {
            std::fs::write(path, bytes).unwrap();
        }
    }
    // A torn last line (a process killed mid-append) is skipped, the rest replayed.
    let (path, bytes) = &copies[0];
    let mut torn = bytes.clone();
    torn.extend_from_slice(b"{\"id\":\"half");
    std::fs::write(path, torn).unwrap();
    let (handle, writer) =
        spawn_ledger(db.store.clone(), writer_config(&db), &Registry::new()).unwrap();
    eventually("a torn spill file replayed", || {
        let gone = spill_files(&spill_dir).is_empty();
        async move { gone }
    })
    .await;
    handle.flush().await.unwrap();
    writer.shutdown().await.unwrap();
    assert_eq!(db.store.ledger_count().await.unwrap(), 300);
}

async fn retention_rollup_keeps_totals_exact(db: Db) {
    use fairgate_store::retention::{retention_cutoff, DAY_MS};
    let s = &db.store;
    let day0 = 20_000 * DAY_MS; // a UTC midnight in 2024
    let mut rows = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..400u64 {
        let day = i64::try_from(i % 10).unwrap();
        let ts = day0 + day * DAY_MS + rng.gen_range(0..DAY_MS);
        let tenant = ["a", "b", "c"][rng.gen_range(0..3)];
        let mut r = row(
            &format!("r{i:04}"),
            ts,
            Some(tenant),
            Some(["m1", "m2"][rng.gen_range(0..2)]),
            rng.gen_range(0..1000),
            rng.gen_range(0..1000),
        );
        r.user =
            [None, Some("alice".to_owned()), Some("bob".to_owned())][rng.gen_range(0..3)].clone();
        r.key_id = Some(KeyId::from(["k1", "k2"][rng.gen_range(0..2)]));
        r.status = [200, 200, 429, 502][rng.gen_range(0..4)];
        r.cost = Micros(rng.gen_range(0..10_000));
        if i % 17 == 0 {
            r.tenant = None;
        }
        if i % 19 == 0 {
            r.model = None;
        }
        rows.push(r);
    }
    s.insert_ledger_rows(&rows).await.unwrap();

    // Every report, over day-aligned windows, before and after.
    async fn reports(s: &Store, day0: i64) -> Vec<String> {
        let mut out = vec![format!("{:?}", s.usage(None, None, None).await.unwrap())];
        for t in ["a", "b", "zzz"] {
            out.push(format!("{:?}", s.usage(Some(t), None, None).await.unwrap()));
            for d in [0, 3, 6, 9, 12] {
                let since = day0 + d * DAY_MS;
                out.push(format!(
                    "{:?}",
                    s.spend(SpendScope::Tenant(t), since).await.unwrap()
                ));
                out.push(format!(
                    "{:?}",
                    s.usage(Some(t), Some(since), Some(since + 2 * DAY_MS))
                        .await
                        .unwrap()
                ));
                out.push(format!(
                    "{:?}",
                    s.usage_by_user(Some(t), since, since + 3 * DAY_MS)
                        .await
                        .unwrap()
                ));
            }
        }
        for k in ["k1", "k2"] {
            for d in [0, 5, 8] {
                let key = KeyId::from(k);
                out.push(format!(
                    "{:?}",
                    s.spend(SpendScope::Key(&key), day0 + d * DAY_MS)
                        .await
                        .unwrap()
                ));
            }
        }
        out.push(format!(
            "{:?}",
            s.usage_by_user(None, day0, day0 + 10 * DAY_MS)
                .await
                .unwrap()
        ));
        out
    }
    let before = reports(s, day0).await;
    // Sanity: the export sums match the raw rows.
    let all = s
        .usage_by_user(None, day0, day0 + 10 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|u| u.requests).sum::<u64>(), 400);
    assert_eq!(
        all.iter().map(|u| u.cost.0).sum::<u64>(),
        rows.iter().map(|r| r.cost.0).sum::<u64>()
    );

    // Roll the first 6 days up, in small batches (several transactions).
    let now = day0 + 9 * DAY_MS + 5;
    let cutoff = retention_cutoff(now, 3).unwrap();
    assert_eq!(cutoff, day0 + 6 * DAY_MS);
    let old = rows.iter().filter(|r| r.ts < cutoff).count() as u64;
    assert_eq!(s.roll_up_ledger(cutoff, 7).await.unwrap(), old);
    assert_eq!(s.ledger_count().await.unwrap(), 400 - old);
    assert!(s.ledger_daily_count().await.unwrap() > 0);
    assert!(s.ledger_daily_count().await.unwrap() < old);
    assert_eq!(
        s.roll_up_ledger(cutoff, 7).await.unwrap(),
        0,
        "nothing twice"
    );
    assert_eq!(reports(s, day0).await, before);

    // A row replayed late (older than the cut-off) is rolled up by the next run, counted once.
    let mut late = row("late", day0 + DAY_MS + 5, Some("a"), Some("m1"), 11, 13);
    late.cost = Micros(17);
    s.insert_ledger_rows(std::slice::from_ref(&late))
        .await
        .unwrap();
    let with_late = reports(s, day0).await;
    assert_ne!(with_late, before);
    assert_eq!(s.roll_up_ledger(cutoff, 5_000).await.unwrap(), 1);
    assert_eq!(reports(s, day0).await, with_late);
}

// ---------------------------------------------------------------------------------------------
// portal: users, sessions, audit log

fn user(id: &str, email: &str, tenant: Option<&str>) -> User {
    User {
        id: id.into(),
        email: email.into(),
        name: Some(format!("User {id}")),
        password_hash: Some(format!("$argon2id$v=19$m=19456,t=2,p=1${id}")),
        role: Role::User,
        tenant: tenant.map(Into::into),
        oidc_subject: None,
        disabled: false,
        created_at: 1_700_000_000_000,
    }
}

fn expect_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, needle: &str) {
    match result {
        Err(StoreError::Conflict(what)) => assert!(what.contains(needle), "{what}"),
        other => panic!("expected Conflict naming {needle}, got {other:?}"),
    }
}

async fn users_crud(db: Db) {
    let s = &db.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    assert!(s.list_users(None).await.unwrap().is_empty());

    // Stored lower-cased, found whatever the case of the lookup.
    let alice = User {
        role: Role::Operator,
        oidc_subject: Some("https://idp.example|Abc-123".into()),
        ..user("u1", "Alice@Example.COM", Some("physics"))
    };
    s.create_user(&alice).await.unwrap();
    let stored = User {
        email: "alice@example.com".into(),
        ..alice.clone()
    };
    assert_eq!(s.get_user("u1").await.unwrap(), Some(stored.clone()));
    for email in [
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "Alice@example.Com",
    ] {
        assert_eq!(
            s.get_user_by_email(email).await.unwrap(),
            Some(stored.clone()),
            "{email}"
        );
    }
    assert_eq!(
        s.get_user_by_subject("https://idp.example|Abc-123")
            .await
            .unwrap(),
        Some(stored.clone())
    );
    // Subjects are compared exactly.
    assert_eq!(
        s.get_user_by_subject("https://idp.example|abc-123")
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_user("missing").await.unwrap(), None);
    assert_eq!(s.get_user_by_email("bob@example.com").await.unwrap(), None);

    // An SSO-only account: no password, no name, no tenant.
    let bob = User {
        name: None,
        password_hash: None,
        tenant: None,
        role: Role::TenantAdmin,
        oidc_subject: Some("https://idp.example|bob".into()),
        ..user("u2", "bob@example.com", None)
    };
    s.create_user(&bob).await.unwrap();
    assert_eq!(s.get_user("u2").await.unwrap(), Some(bob.clone()));
    assert_eq!(s.count_users().await.unwrap(), 2);

    // Update writes everything but created_at; the email is lower-cased again.
    let changed = User {
        email: "Alice.New@Example.com".into(),
        name: None,
        password_hash: Some("$argon2id$new".into()),
        role: Role::User,
        tenant: Some("chemistry".into()),
        oidc_subject: None,
        disabled: true,
        created_at: 1,
        ..stored.clone()
    };
    assert!(s.update_user(&changed).await.unwrap());
    let expected = User {
        email: "alice.new@example.com".into(),
        created_at: stored.created_at,
        ..changed.clone()
    };
    assert_eq!(s.get_user("u1").await.unwrap(), Some(expected.clone()));
    assert_eq!(
        s.get_user_by_email("ALICE.NEW@example.com").await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        s.get_user_by_email("alice@example.com").await.unwrap(),
        None
    );
    assert_eq!(
        s.get_user_by_subject("https://idp.example|Abc-123")
            .await
            .unwrap(),
        None
    );
    // Updating a user to its own current values is no conflict.
    assert!(s.update_user(&expected).await.unwrap());
    assert!(!s
        .update_user(&user("missing", "x@example.com", None))
        .await
        .unwrap());
    assert_eq!(s.count_users().await.unwrap(), 2);
    assert_eq!(s.list_users(None).await.unwrap(), vec![expected, bob]);
}

async fn user_conflicts(db: Db) {
    let s = &db.store;
    let a = User {
        oidc_subject: Some("iss|a".into()),
        ..user("u1", "a@example.com", None)
    };
    let b = User {
        oidc_subject: Some("iss|b".into()),
        ..user("u2", "b@example.com", None)
    };
    s.create_user(&a).await.unwrap();
    s.create_user(&b).await.unwrap();

    // Create: same email in another case, same subject, same id.
    expect_conflict(
        s.create_user(&user("u3", "A@EXAMPLE.com", None)).await,
        "a@example.com",
    );
    expect_conflict(
        s.create_user(&User {
            oidc_subject: Some("iss|b".into()),
            ..user("u3", "c@example.com", None)
        })
        .await,
        "iss|b",
    );
    expect_conflict(
        s.create_user(&user("u1", "other@example.com", None)).await,
        "u1",
    );
    // Several users without a subject are fine (NULLs do not clash).
    s.create_user(&user("u3", "c@example.com", None))
        .await
        .unwrap();
    s.create_user(&user("u4", "d@example.com", None))
        .await
        .unwrap();

    // Update: taking another user's email or subject fails and changes nothing.
    expect_conflict(
        s.update_user(&User {
            email: "B@example.com".into(),
            ..a.clone()
        })
        .await,
        "b@example.com",
    );
    expect_conflict(
        s.update_user(&User {
            oidc_subject: Some("iss|b".into()),
            ..a.clone()
        })
        .await,
        "iss|b",
    );
    assert_eq!(s.get_user("u1").await.unwrap(), Some(a.clone()));
    assert_eq!(s.count_users().await.unwrap(), 4);

    // The store still works after the failed statements (no poisoned connection).
    assert!(s
        .update_user(&User {
            email: "a2@example.com".into(),
            ..a
        })
        .await
        .unwrap());
    // The freed address can be taken by someone else.
    assert!(s
        .update_user(&User {
            email: "a@example.com".into(),
            ..user("u3", "", None)
        })
        .await
        .unwrap());
    assert_eq!(
        s.get_user_by_email("a@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        "u3"
    );
}

async fn users_by_tenant(db: Db) {
    let s = &db.store;
    // Byte order of emails on both backends: digits and upper case would sort first, but
    // emails are lower-cased, so `_` (0x5f) sorts before lower-case letters.
    let users = [
        user("1", "zoe@example.com", Some("physics")),
        user("2", "adam@example.com", Some("physics")),
        user("3", "mia@example.com", Some("chemistry")),
        user("4", "_svc@example.com", Some("physics")),
        user("5", "nobody@example.com", None),
    ];
    for u in &users {
        s.create_user(u).await.unwrap();
    }
    let ids = |list: Vec<User>| list.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_users(Some("physics")).await.unwrap()),
        ["4", "2", "1"]
    );
    assert_eq!(ids(s.list_users(Some("chemistry")).await.unwrap()), ["3"]);
    assert!(s.list_users(Some("biology")).await.unwrap().is_empty());
    assert_eq!(
        ids(s.list_users(None).await.unwrap()),
        ["4", "2", "3", "5", "1"]
    );
    assert_eq!(
        s.list_users(Some("physics")).await.unwrap()[0],
        users[3].clone()
    );
    assert_eq!(s.count_users().await.unwrap(), 5);
}

/// The key directory joins keys to these e-mails (off-boarding): only disabled users, lower-cased.
async fn disabled_user_emails_lists_only_disabled(db: Db) {
    let s = &db.store;
    assert!(s.disabled_user_emails().await.unwrap().is_empty());
    let mut gone = user("1", "Gone@Example.com", Some("physics"));
    gone.disabled = true;
    s.create_user(&gone).await.unwrap();
    s.create_user(&user("2", "here@example.com", Some("physics")))
        .await
        .unwrap();
    assert_eq!(
        s.disabled_user_emails().await.unwrap(),
        ["gone@example.com"]
    );
    // Re-enabled: off the list.
    let mut back = s.get_user("1").await.unwrap().unwrap();
    back.disabled = false;
    assert!(s.update_user(&back).await.unwrap());
    assert!(s.disabled_user_emails().await.unwrap().is_empty());
}

async fn unknown_role_is_corrupt(db: Db) {
    let s = &db.store;
    s.create_user(&user("bad", "bad@example.com", Some("t")))
        .await
        .unwrap();
    s.create_user(&user("ok", "ok@example.com", Some("t")))
        .await
        .unwrap();
    let raw = raw_pool(&db.url).await;
    sqlx::query("UPDATE users SET role = 'superuser' WHERE id = 'bad'")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    for result in [
        s.get_user("bad").await.map(|_| ()),
        s.get_user_by_email("bad@example.com").await.map(|_| ()),
        s.list_users(Some("t")).await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::Corrupt(what)) => {
                assert!(
                    what.contains("user `bad`") && what.contains("superuser"),
                    "{what}"
                )
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert!(s.get_user("ok").await.unwrap().is_some());
    // Writing the user repairs the row.
    assert!(s
        .update_user(&user("bad", "bad@example.com", Some("t")))
        .await
        .unwrap());
    assert_eq!(s.list_users(Some("t")).await.unwrap().len(), 2);
}

fn session(id_hash: &str, user_id: &str, expires_at: i64) -> Session {
    Session {
        id_hash: id_hash.into(),
        user_id: user_id.into(),
        csrf: format!("csrf-{id_hash}"),
        created_at: 1_000,
        expires_at,
    }
}

async fn sessions_lifecycle(db: Db) {
    let s = &db.store;
    let a1 = session(&"a".repeat(64), "alice", 5_000);
    let a2 = session(&"b".repeat(64), "alice", 10_000);
    let b1 = session(&"c".repeat(64), "bob", 20_000);
    let old = session(&"d".repeat(64), "carol", 2_000);
    for x in [&a1, &a2, &b1, &old] {
        s.create_session(x).await.unwrap();
    }
    expect_conflict(
        s.create_session(&session(&"a".repeat(64), "mallory", 1))
            .await,
        "session",
    );
    assert_eq!(s.get_session(&a1.id_hash).await.unwrap(), Some(a1.clone()));
    assert_eq!(s.get_session("missing").await.unwrap(), None);

    // Expired sessions are still returned; the caller decides.
    assert_eq!(
        s.get_session(&old.id_hash).await.unwrap(),
        Some(old.clone())
    );
    // The sweep deletes `expires_at <= now` only.
    assert_eq!(s.delete_expired_sessions(1_999).await.unwrap(), 0);
    assert_eq!(s.delete_expired_sessions(2_000).await.unwrap(), 1);
    assert_eq!(s.get_session(&old.id_hash).await.unwrap(), None);
    assert_eq!(s.delete_expired_sessions(2_000).await.unwrap(), 0);

    // Sign-out.
    assert!(s.delete_session(&a1.id_hash).await.unwrap());
    assert!(!s.delete_session(&a1.id_hash).await.unwrap());
    assert_eq!(s.get_session(&a1.id_hash).await.unwrap(), None);

    // Everything of one user.
    s.create_session(&a1).await.unwrap();
    assert_eq!(s.delete_user_sessions("alice").await.unwrap(), 2);
    assert_eq!(s.delete_user_sessions("alice").await.unwrap(), 0);
    assert_eq!(s.get_session(&a2.id_hash).await.unwrap(), None);
    assert_eq!(s.get_session(&b1.id_hash).await.unwrap(), Some(b1.clone()));

    assert_eq!(s.delete_expired_sessions(i64::MAX).await.unwrap(), 1);
    assert_eq!(s.get_session(&b1.id_hash).await.unwrap(), None);
}

fn audit(id: &str, ts: i64) -> AuditEntry {
    AuditEntry {
        id: id.into(),
        ts,
        actor: "admin-token".into(),
        action: "tenant.update".into(),
        target: format!("tenant:{id}"),
        before: Some(format!("{{\"weight\":1,\"id\":\"{id}\"}}")),
        after: Some("{\"weight\":2,\"note\":\"caf\u{e9} \\\"q\\\"\"}".into()),
    }
}

async fn audit_order_limit_and_paging(db: Db) {
    let s = &db.store;
    assert!(s.list_audit(10, None).await.unwrap().is_empty());
    let created = AuditEntry {
        before: None,
        action: "key.create".into(),
        ..audit("e1", 100)
    };
    let deleted = AuditEntry {
        after: None,
        action: "group.delete".into(),
        actor: "alice@example.com".into(),
        ..audit("e5", 300)
    };
    // Inserted out of order; ties on ts order by id descending (bytes: `E` < `e`).
    let entries = [
        audit("e3", 200),
        created.clone(),
        deleted.clone(),
        audit("e2", 200),
        audit("E4", 200),
        audit("e6", 400),
    ];
    for e in &entries {
        s.insert_audit(e).await.unwrap();
    }
    expect_conflict(s.insert_audit(&audit("e3", 999)).await, "e3");

    let ids = |list: Vec<AuditEntry>| list.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_audit(100, None).await.unwrap()),
        ["e6", "e5", "e3", "e2", "E4", "e1"]
    );
    assert_eq!(ids(s.list_audit(2, None).await.unwrap()), ["e6", "e5"]);
    assert!(s.list_audit(0, None).await.unwrap().is_empty());
    // before_ts is exclusive.
    assert_eq!(
        ids(s.list_audit(100, Some(300)).await.unwrap()),
        ["e3", "e2", "E4", "e1"]
    );
    assert_eq!(ids(s.list_audit(2, Some(300)).await.unwrap()), ["e3", "e2"]);
    assert!(s.list_audit(100, Some(100)).await.unwrap().is_empty());
    // Full round trip, NULL before/after included.
    let all = s.list_audit(100, None).await.unwrap();
    assert_eq!(all[1], deleted);
    assert_eq!(all[5], created);
    assert_eq!(all[2], audit("e3", 200));
}

/// A database as a fairgate with migrations 1 and 2 left it, holding rows of that era.
async fn v2_database(db: &Db) -> String {
    let url = v1_database(db).await;
    let raw_url = if url.starts_with("sqlite://") {
        format!("{url}?mode=rwc")
    } else {
        url.clone()
    };
    let raw = raw_pool(&raw_url).await;
    sqlx::raw_sql(MIGRATIONS[1].sql)
        .execute(&raw)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO fairgate_migrations (version, applied_at) VALUES (2, 0)",
        "INSERT INTO groups (name, weight, created_at) VALUES ('eng', 4, 8)",
        "UPDATE tenants SET policy_json = '{\"hard_cap\":true}' WHERE name = 'old'",
        "INSERT INTO ledger (id, ts, tenant, user_name, key_id, model, backend, endpoint, stream, \
         prompt_tokens, completion_tokens, cached_tokens, reserved_tokens, usage_source, status, \
         outcome, error_class, queue_ms, ttft_ms, duration_ms, cost, cache_hit, priority) VALUES \
         ('r-v2', 9, 'old', NULL, 'k-old', 'm', 'http://b:8000', '/v1/completions', 0, 1, 2, 0, 3, \
         'upstream', 200, 'ok', NULL, 0, NULL, 100, 77, 1, 'batch')",
    ] {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    raw.close().await;
    url
}

async fn upgrade_from_v2_keeps_rows(db: Db) {
    let url = v2_database(&db).await;
    let s = Store::connect(&url).await.unwrap();
    // Everything of v2 is still there.
    assert_eq!(
        s.get_tenant("old").await.unwrap(),
        Some(Tenant {
            created_at: 5,
            policy: TenantPolicy {
                hard_cap: true,
                ..TenantPolicy::default()
            },
            ..tenant("old", 2, Some("eng"))
        })
    );
    assert_eq!(s.list_groups().await.unwrap(), vec![group("eng", 4)]);
    assert!(s.get_key(&KeyId::from("k-old")).await.unwrap().is_some());
    assert_eq!(s.ledger_count().await.unwrap(), 2);
    let newest = s.requests(None, 1).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            newest.id.0.as_str(),
            newest.cost,
            newest.cache_hit,
            newest.priority,
            newest.attempts
        ),
        // A row that reached a backend before failover existed was one attempt.
        ("r-v2", Micros(77), true, Priority::Batch, 1)
    );
    // The portal tables exist, empty, and work.
    assert_eq!(s.count_users().await.unwrap(), 0);
    assert!(s.list_audit(10, None).await.unwrap().is_empty());
    s.create_user(&user("u1", "Op@Example.com", Some("old")))
        .await
        .unwrap();
    s.create_session(&session("h", "u1", 10)).await.unwrap();
    s.insert_audit(&audit("a1", 1)).await.unwrap();
    assert_eq!(
        s.get_user_by_email("op@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        "u1"
    );
    assert!(s.get_session("h").await.unwrap().is_some());
    assert_eq!(s.list_audit(10, None).await.unwrap().len(), 1);
    s.close().await;

    let raw = raw_pool(&url).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM fairgate_migrations ORDER BY version")
            .fetch_all(&raw)
            .await
            .unwrap();
    let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, all);
    raw.close().await;
}

// ---------------------------------------------------------------------------------------------
// Slurm jobs and the SU report

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2025-03-10T00:00:00Z.
const D0: i64 = 1_741_564_800_000;

#[allow(clippy::too_many_arguments)]
fn slurm_job(
    id: &str,
    model: &str,
    gpus: u64,
    su: f64,
    submitted: i64,
    started: Option<i64>,
    ended: Option<i64>,
    state: &str,
) -> SlurmJobRow {
    SlurmJobRow {
        job_id: id.into(),
        model: model.into(),
        backend: format!("slurm-{id}"),
        nodes: "gpu-01,gpu-02".into(),
        gpus,
        gpu_type: None,
        su_per_gpu_hour_micros: fairgate_types::micro_sus(su),
        submitted_at: submitted,
        started_at: started,
        ended_at: ended,
        state: state.into(),
        reason: None,
    }
}

/// A ledger row of `tenant` served by the backend named `backend`.
fn served(id: &str, ts: i64, tenant: &str, backend: &str, p: u64, c: u64) -> LedgerRow {
    let mut r = row(id, ts, Some(tenant), Some("llama"), p, c);
    r.backend = Some(backend.into());
    r
}

async fn slurm_jobs_upsert_and_list(db: Db) {
    let s = &db.store;
    let (since, until) = (D0, D0 + 2 * DAY);
    assert!(s.slurm_jobs(since, until).await.unwrap().is_empty());

    let pending = slurm_job("1001", "llama", 8, 108.6, D0 + HOUR, None, None, "PENDING");
    s.upsert_slurm_job(&pending).await.unwrap();
    assert_eq!(
        s.slurm_jobs(since, until).await.unwrap(),
        vec![pending.clone()]
    );

    // Every field is replaced by the next upsert of the same job.
    let done = SlurmJobRow {
        nodes: "gpu-07".into(),
        gpus: 4,
        gpu_type: Some("a100".into()),
        su_per_gpu_hour_micros: 108_600_000,
        started_at: Some(D0 + 2 * HOUR),
        ended_at: Some(D0 + 30 * HOUR),
        state: "TIMEOUT".into(),
        reason: Some("time limit, \"24h\"".into()),
        model: "llama-70b".into(),
        backend: "slurm-1001-b".into(),
        submitted_at: D0 + HOUR / 2,
        ..pending.clone()
    };
    s.upsert_slurm_job(&done).await.unwrap();
    assert_eq!(
        s.slurm_jobs(since, until).await.unwrap(),
        vec![done.clone()]
    );

    let running_before = slurm_job(
        "0999",
        "m",
        1,
        1.0,
        D0 - DAY,
        Some(D0 - HOUR),
        None,
        "RUNNING",
    );
    let ended_before = slurm_job(
        "0998",
        "m",
        1,
        1.0,
        D0 - 3 * DAY,
        Some(D0 - 2 * DAY),
        Some(D0),
        "COMPLETED",
    );
    let pending_before = slurm_job("0997", "m", 1, 1.0, D0 - 1, None, None, "PENDING");
    let starts_at_until = slurm_job("1005", "m", 1, 1.0, D0, Some(until), None, "RUNNING");
    let never_ran = slurm_job(
        "1003",
        "m",
        1,
        1.0,
        D0 + DAY,
        None,
        Some(D0 + DAY + 1),
        "CANCELLED",
    );
    let pending_after = slurm_job("1006", "m", 1, 1.0, until, None, None, "PENDING");
    for j in [
        &running_before,
        &ended_before,
        &pending_before,
        &starts_at_until,
        &never_ran,
        &pending_after,
    ] {
        s.upsert_slurm_job(j).await.unwrap();
    }
    // Runs that overlap [since, until) (a running one up to now) and jobs submitted in it that
    // never ran, by submission time; ranges are half-open at both ends.
    let ids: Vec<String> = s
        .slurm_jobs(since, until)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids, ["0999", "1001", "1003"]);
    let ids = |since: i64, until: i64| async move {
        s.slurm_jobs(since, until)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect::<Vec<String>>()
    };
    assert_eq!(ids(D0 - 2 * DAY, D0 - DAY).await, ["0998"]);
    // A job that ran is listed by its run, not by when it was submitted.
    assert!(ids(D0 - 3 * DAY, D0 - 2 * DAY).await.is_empty());
    // By submission time.
    assert_eq!(ids(D0 - DAY, D0).await, ["0998", "0999", "0997"]);
}

/// Compares report lines: text and tokens exactly, numbers to float rounding.
fn assert_lines(got: &[SuLine], want: &[SuLine]) {
    let key = |l: &SuLine| {
        (
            l.day.clone(),
            l.tenant.clone(),
            l.model.clone(),
            l.job_id.clone(),
            l.tokens,
        )
    };
    assert_eq!(
        got.iter().map(key).collect::<Vec<_>>(),
        want.iter().map(key).collect::<Vec<_>>(),
        "{got:#?}"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for (g, w) in got.iter().zip(want) {
        assert!(
            close(g.gpu_hours, w.gpu_hours) && close(g.sus, w.sus) && close(g.share, w.share),
            "got {g:?}, want {w:?}"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn su_line(
    day: &str,
    tenant: &str,
    model: &str,
    job: &str,
    hours: f64,
    su: f64,
    tokens: u64,
    share: f64,
) -> SuLine {
    SuLine {
        day: day.into(),
        tenant: tenant.into(),
        model: model.into(),
        job_id: job.into(),
        gpu_hours: hours * share,
        sus: hours * su * share,
        tokens,
        share,
    }
}

async fn su_report_splits_job_days_by_tokens(db: Db) {
    let s = &db.store;
    let now = D0 + 2 * DAY + 12 * HOUR;
    // A: 8 GPUs at 108.6 SU per GPU-hour, 18:00 on day 0 to 06:00 on day 1.
    let a = slurm_job(
        "1001",
        "llama",
        8,
        108.6,
        D0,
        Some(D0 + 18 * HOUR),
        Some(D0 + DAY + 6 * HOUR),
        "COMPLETED",
    );
    // B: 2 GPUs at 50 SU, from day 1 on, still running at `now`.
    let b = slurm_job(
        "1002",
        "mistral",
        2,
        50.0,
        D0 + DAY - HOUR,
        Some(D0 + DAY),
        None,
        "RUNNING",
    );
    // Never ran; and one that ran before the range.
    let c = slurm_job("1003", "llama", 8, 108.6, D0 + DAY, None, None, "PENDING");
    let e = slurm_job(
        "1004",
        "llama",
        4,
        10.0,
        D0 - 3 * DAY,
        Some(D0 - 2 * DAY),
        Some(D0 - DAY),
        "COMPLETED",
    );
    for j in [&a, &b, &c, &e] {
        s.upsert_slurm_job(j).await.unwrap();
    }
    // Before any request, every job-day that ran is idle; the pending job has none.
    let idle: Vec<(String, String)> = s
        .su_report(D0, D0 + 2 * DAY, now)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.job_id, l.tenant))
        .collect();
    let idle_of = |j: &str| (j.to_owned(), IDLE_TENANT.to_owned());
    assert_eq!(idle, [idle_of("1001"), idle_of("1001"), idle_of("1002")]);
    s.insert_ledger_rows(&[
        // A, day 0: alpha 100 tokens, beta 300 (two rows), delta a failure with none.
        served("a0", D0 + 19 * HOUR, "alpha", "slurm-1001", 60, 40),
        served("b0", D0 + 20 * HOUR, "beta", "slurm-1001", 100, 50),
        served("b1", D0 + 23 * HOUR, "beta", "slurm-1001", 100, 50),
        served("d0", D0 + 21 * HOUR, "delta", "slurm-1001", 0, 0),
        // A, day 1: alpha 50, beta 50, gamma 100.
        served("a1", D0 + DAY + HOUR, "alpha", "slurm-1001", 30, 20),
        served("b2", D0 + DAY + 2 * HOUR, "beta", "slurm-1001", 50, 0),
        served("g1", D0 + DAY + 6 * HOUR - 1, "gamma", "slurm-1001", 90, 10),
        // A's backend outside A's run: not A's.
        served("g0", D0 + 17 * HOUR, "gamma", "slurm-1001", 1000, 0),
        served("g2", D0 + DAY + 6 * HOUR, "gamma", "slurm-1001", 1000, 0),
        // Other backends, in A's and B's runs: not theirs.
        served(
            "x0",
            D0 + 20 * HOUR,
            "gamma",
            "http://127.0.0.1:8000",
            5000,
            0,
        ),
        served("x1", D0 + DAY + 3 * HOUR, "gamma", "slurm-9999", 5000, 0),
        served("x2", D0 + DAY + 3 * HOUR, "gamma", "slurm-10021", 5000, 0),
        // B serves nobody on day 1; alpha on day 2 (outside the first range), through a LoRA
        // adapter of B's model, which the ledger records under the adapter's name.
        LedgerRow {
            model: Some("mistral-sql-lora".into()),
            ..served("a2", D0 + 2 * DAY + HOUR, "alpha", "slurm-1002", 7, 3)
        },
        // E's run, before the range.
        served("e0", D0 - 2 * DAY + HOUR, "alpha", "slurm-1004", 7, 3),
    ])
    .await
    .unwrap();

    let (d0, d1, d2) = ("2025-03-10", "2025-03-11", "2025-03-12");
    // A: 6 h × 8 GPUs = 48 GPU-hours on each day; B: 24 h × 2 GPUs on day 1.
    let want = vec![
        su_line(d0, "alpha", "llama", "1001", 48.0, 108.6, 100, 0.25),
        su_line(d0, "beta", "llama", "1001", 48.0, 108.6, 300, 0.75),
        su_line(d1, "alpha", "llama", "1001", 48.0, 108.6, 50, 0.25),
        su_line(d1, "beta", "llama", "1001", 48.0, 108.6, 50, 0.25),
        su_line(d1, "gamma", "llama", "1001", 48.0, 108.6, 100, 0.5),
        su_line(d1, IDLE_TENANT, "mistral", "1002", 48.0, 50.0, 0, 1.0),
    ];
    let got = s.su_report(D0, D0 + 2 * DAY, now).await.unwrap();
    assert_lines(&got, &want);
    // Per job-day: the tenants' SUs add up to overlap hours × GPUs × factor, shares to 1.
    for (day, job, total) in [
        (d0, "1001", 48.0 * 108.6),
        (d1, "1001", 48.0 * 108.6),
        (d1, "1002", 48.0 * 50.0),
    ] {
        let part: Vec<&SuLine> = got
            .iter()
            .filter(|l| l.day == day && l.job_id == job)
            .collect();
        let sus: f64 = part.iter().map(|l| l.sus).sum();
        let share: f64 = part.iter().map(|l| l.share).sum();
        assert!(
            (sus - total).abs() < 1e-9 * total,
            "{day} {job}: {sus} != {total}"
        );
        assert!((share - 1.0).abs() < 1e-12, "{day} {job}: shares {share}");
    }

    // A running job is charged up to `now`: B's day 2 is 12 h × 2 GPUs, all alpha's.
    let got = s.su_report(D0, D0 + 3 * DAY, now).await.unwrap();
    let mut want3 = want.clone();
    want3.push(su_line(d2, "alpha", "mistral", "1002", 24.0, 50.0, 10, 1.0));
    assert_lines(&got, &want3);

    // Days outside the range are left out; a range inside a day clips the run and the tokens.
    let got = s.su_report(D0 + DAY, D0 + 2 * DAY, now).await.unwrap();
    assert_lines(&got, &want[2..]);
    let got = s.su_report(D0 + 20 * HOUR, D0 + DAY, now).await.unwrap();
    assert_lines(
        &got,
        &[su_line(d0, "beta", "llama", "1001", 32.0, 108.6, 300, 1.0)],
    );
    assert!(s
        .su_report(D0 + 3 * DAY, D0 + 4 * DAY, now)
        .await
        .unwrap()
        .is_empty());
    // E ran all of day -2 and ended as day -1 began.
    assert!(s.su_report(D0 - DAY, D0, now).await.unwrap().is_empty());
    let got = s.su_report(D0 - 3 * DAY, D0, now).await.unwrap();
    assert_lines(
        &got,
        &[su_line(
            "2025-03-08",
            "alpha",
            "llama",
            "1004",
            96.0,
            10.0,
            10,
            1.0,
        )],
    );
}
