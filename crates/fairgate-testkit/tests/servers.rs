//! The private servers really start, serve, stop, come back with their data, and clean up.

use fairgate_testkit::{PrivatePostgres, PrivateRedis};
use sqlx::Connection;
use std::io::{Read, Write};
use std::net::TcpStream;

async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::PgConnection::connect(url).await
}

#[tokio::test]
async fn private_postgres_start_stop_start_again_keeps_data() {
    let mut pg = match PrivatePostgres::start() {
        Ok(pg) => pg,
        Err(e) => return fairgate_testkit::require("PostgreSQL server binaries", &e),
    };
    let url = pg.url();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    assert!(url.ends_with("/test"), "{url}");
    let dir = pg.dir().to_owned();
    assert!(dir.exists());

    let mut c = connect(&url).await.expect("connect to the private server");
    sqlx::query("CREATE TABLE kept (v INT)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (42)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    pg.stop();
    assert!(!pg.is_running());
    assert!(
        connect(&url).await.is_err(),
        "a stopped server must refuse connections"
    );

    pg.start_again().expect("start again");
    assert_eq!(pg.url(), url, "same port after start_again");
    let mut c = connect(&url).await.expect("connect after start_again");
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42, "committed data survives stop/start_again");
    c.close().await.unwrap();
    assert!(pg.start_again().is_err(), "already running");

    drop(pg);
    assert!(!dir.exists(), "drop removes the directory");
    assert!(connect(&url).await.is_err(), "drop stops the server");
}

#[test]
fn postgres_url_is_one_instance_per_process() {
    if std::env::var_os(fairgate_testkit::POSTGRES_URL_ENV).is_some() {
        // The environment chose the server; nothing private to check.
        return;
    }
    let Some(a) = fairgate_testkit::postgres_url() else {
        return;
    };
    let b = fairgate_testkit::postgres_url().unwrap();
    assert_eq!(a, b);
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn redis_cmd(port: u16, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn private_redis_start_stop_start_again() {
    let mut r = match PrivateRedis::start() {
        Ok(r) => r,
        Err(e) => return fairgate_testkit::require("redis-server", &e),
    };
    let port = r.port();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{port}"));
    assert!(redis_ping(port));
    assert_eq!(redis_cmd(port, "SET k v"), "+OK\r\n");
    r.stop();
    assert!(!redis_ping(port), "stopped");
    r.start_again().unwrap();
    assert!(redis_ping(port), "same port after start_again");
    // No persistence: a restart is empty.
    assert_eq!(redis_cmd(port, "GET k"), "$-1\r\n");
    drop(r);
    assert!(!redis_ping(port), "drop stops the server");
}
