//! `require` fails the test under CI and only skips (loudly) elsewhere. Checked in child
//! processes of this test binary, each with its own `CI` value.

use std::process::Command;

#[test]
#[ignore = "helper: run as a child process by require_fails_only_under_ci"]
fn child_require() {
    fairgate_testkit::require("a thing", "it is missing on purpose");
}

fn run_child(ci: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_require", "--ignored", "--nocapture"]);
    match ci {
        Some(v) => cmd.env("CI", v),
        None => cmd.env_remove("CI"),
    };
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn require_fails_only_under_ci() {
    for ci in [Some("true"), Some("1"), Some("yes")] {
        let (ok, text) = run_child(ci);
        assert!(!ok, "CI={ci:?}: require must fail the test: {text}");
        assert!(text.contains("a thing is required under CI"), "{text}");
    }
    for ci in [None, Some(""), Some("0"), Some("false")] {
        let (ok, text) = run_child(ci);
        assert!(ok, "CI={ci:?}: require must only skip: {text}");
        assert!(text.contains("SKIP") && text.contains("a thing"), "{text}");
    }
}
