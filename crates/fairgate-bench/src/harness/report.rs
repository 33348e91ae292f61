//! How the benchmarks state results beyond their tables: pass/fail criteria lines (kept for
//! the JSON too) and the `--json` results file.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

pub(crate) fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// A criterion line, printed and kept for the JSON.
pub(crate) fn criterion(out: &mut Vec<Value>, name: &str, ok: bool, detail: String) {
    println!("criterion: {name}: {} ({detail})", pass(ok));
    out.push(json!({"criterion": name, "pass": ok, "detail": detail}));
}

/// Writes the results document to `path` and says so.
pub(crate) fn write_json(path: &Path, doc: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nresults written to {}", path.display());
    Ok(())
}
