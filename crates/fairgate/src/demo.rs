//! `fairgate demo`: the gateway, two simulated models and SQLite in one process, with a demo
//! tenant and key, so a new user can make a streamed call within a minute of cloning.
//!
//! The demo key is stored in `<data dir>/demo-key` (mode 0600) because a key's secret is never
//! kept in the database; on restart the same key is reused if it still authenticates, so the
//! snippet printed yesterday still works today.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fairgate_sim::{SimConfig, Simulator};
use fairgate_types::{now_millis, KeyRecord, Tenant};
use tokio::net::TcpListener;

use crate::config::{BackendConfig, Config, ModelConfig};
use crate::identity::{mint_key, split_key};
use crate::server::{shutdown_signal, Gateway};

pub const DEMO_MODELS: [&str; 2] = ["sim-llama", "sim-qwen"];
pub const DEMO_TENANT: &str = "demo";

pub struct DemoOptions {
    pub listen: String,
    pub data_dir: std::path::PathBuf,
    pub json: bool,
}

/// A simulator profile that looks like a small model on one GPU: streams visibly, but fast.
fn demo_sim(model: &str) -> SimConfig {
    SimConfig {
        model: model.to_owned(),
        max_num_seqs: 32,
        prefill_overhead: Duration::from_millis(20),
        prefill_per_token: Duration::from_micros(50),
        decode_step_base: Duration::from_millis(12),
        decode_step_per_seq: Duration::from_micros(200),
        ..SimConfig::default()
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let mut models = Vec::new();
    for name in DEMO_MODELS {
        let sim = Simulator::new(demo_sim(name));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a simulator port")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = fairgate_sim::serve(listener, sim, std::future::pending()).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        models.push(ModelConfig::new(
            name,
            vec![BackendConfig::new(format!("http://{addr}"), 64)],
        ));
    }

    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut config = Config::load(None, env).context("loading configuration")?;
    config.listen = opts.listen.clone();
    config.data_dir = opts.data_dir.clone();
    if std::env::var("FAIRGATE_DATABASE").is_err() {
        config.database = format!("sqlite://{}", opts.data_dir.join("fairgate.db").display());
    }
    if config.admin_token.is_none() {
        config.admin_token = Some(read_or_create_secret(
            &opts.data_dir.join("admin-token"),
            crate::identity::mint_key().expose(),
        )?);
    }
    config.models = models;
    config.validate().context("demo configuration")?;
    let admin_token = config.admin_token.clone().unwrap_or_default();
    let addr = config.listen_addr()?;

    let gateway = Gateway::build(config).await?;
    let key = ensure_demo_key(&gateway, &opts.data_dir).await?;
    let portal_password = ensure_demo_operator(&gateway, &opts.data_dir).await?;
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding {addr} (is another fairgate running? try --listen 127.0.0.1:0)")
    })?;
    let bound = listener.local_addr()?;
    let base = format!("http://{bound}/v1");
    if opts.json {
        let info = serde_json::json!({
            "base_url": base,
            "key": key,
            "admin_url": format!("http://{bound}/admin/v1"),
            "admin_token": admin_token,
            "models": DEMO_MODELS,
            "portal_url": format!("http://{bound}/portal"),
            "portal_email": DEMO_OPERATOR,
            "portal_password": portal_password,
        });
        println!("{info}");
    } else {
        print_banner(&base, &key, &admin_token);
        println!(
            "Portal: http://{bound}/portal  (sign in as {DEMO_OPERATOR} / {portal_password}, an operator)\n"
        );
    }
    gateway.serve(listener, shutdown_signal()).await
}

fn print_banner(base: &str, key: &str, admin_token: &str) {
    let model = DEMO_MODELS[0];
    println!(
        r#"
fairgate demo is running: gateway + simulated models {models} + SQLite.

  base URL:     {base}
  API key:      {key}
  admin token:  {admin_token}   (for /admin/v1 and `fairgate admin`)

Try it with curl:

curl -N {base}/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Or with the OpenAI Python SDK (pip install openai):

from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="{key}")
stream = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}], stream=True)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)

Press Ctrl-C to stop (the ledger is flushed on the way out).
"#,
        models = DEMO_MODELS.join(", "),
    );
}

fn read_or_create_secret(path: &Path, fresh: &str) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    write_private(path, fresh)?;
    Ok(fresh.to_owned())
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{content}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The demo's portal account (an operator in the demo tenant).
pub const DEMO_OPERATOR: &str = "admin@fairgate.local";

/// Creates the demo operator account unless it exists; returns its password (kept in
/// `portal-password` in the data directory, like the demo key).
async fn ensure_demo_operator(gateway: &Gateway, data_dir: &Path) -> anyhow::Result<String> {
    let st = gateway.state();
    let fresh = fairgate_portal::auth::random_token();
    let password = read_or_create_secret(&data_dir.join("portal-password"), &fresh)?;
    let hash = fairgate_control::passwords::hash_password(&password)?;
    match st.store.get_user_by_email(DEMO_OPERATOR).await? {
        Some(mut u) => {
            // Keep the saved password in force even if the file was edited.
            if !u
                .password_hash
                .as_deref()
                .is_some_and(|h| fairgate_control::passwords::verify_password(&password, h))
            {
                u.password_hash = Some(hash);
                st.store.update_user(&u).await?;
            }
        }
        None => {
            st.store
                .create_user(&fairgate_types::User {
                    id: uuid::Uuid::now_v7().to_string(),
                    email: DEMO_OPERATOR.to_owned(),
                    name: Some("Demo operator".to_owned()),
                    password_hash: Some(hash),
                    role: fairgate_types::Role::Operator,
                    tenant: Some(DEMO_TENANT.to_owned()),
                    oidc_subject: None,
                    disabled: false,
                    created_at: now_millis(),
                })
                .await?;
        }
    }
    Ok(password)
}

/// Creates the demo tenant and key unless they exist and the saved key still works.
async fn ensure_demo_key(gateway: &Gateway, data_dir: &Path) -> anyhow::Result<String> {
    let st = gateway.state();
    if st.store.get_tenant(DEMO_TENANT).await?.is_none() {
        st.store
            .create_tenant(&Tenant {
                name: DEMO_TENANT.to_owned(),
                weight: 1,
                group: None,
                created_at: now_millis(),
                policy: Default::default(),
            })
            .await?;
    }
    let key_file = data_dir.join("demo-key");
    if let Ok(saved) = std::fs::read_to_string(&key_file) {
        let saved = saved.trim().to_owned();
        st.identity.reload().await?;
        if split_key(&saved).is_some()
            && st
                .identity
                .authenticate(Some(&format!("Bearer {saved}")))
                .is_ok()
        {
            return Ok(saved);
        }
    }
    let minted = mint_key();
    st.store
        .insert_key(&KeyRecord {
            id: minted.id.clone(),
            tenant: DEMO_TENANT.to_owned(),
            user: Some("demo-user".to_owned()),
            name: "demo".to_owned(),
            models: None,
            secret_hash: minted.secret_hash.clone(),
            expires_at: None,
            enabled: true,
            created_at: now_millis(),
            revoked_at: None,
            policy: Default::default(),
        })
        .await?;
    st.identity.reload().await?;
    write_private(&key_file, minted.expose())?;
    Ok(minted.expose().to_owned())
}
