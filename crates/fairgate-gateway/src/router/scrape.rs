//! Reads a vLLM server's load from its Prometheus `/metrics` text: the numbers the
//! inference-aware routers (GIE, llm-d, AIBrix) score replicas by.
//!
//! - `vllm:num_requests_waiting`, `vllm:num_requests_running`: summed over series (one per
//!   engine under data parallelism);
//! - `vllm:kv_cache_usage_perc` (0–1; `vllm:gpu_cache_usage_perc` before vLLM 0.9): the
//!   largest over series, since one full engine is what stalls;
//! - `vllm:cache_config_info`: `num_gpu_blocks` × `block_size` = KV capacity in tokens;
//! - `vllm:lora_requests_info`: `max_lora` and the comma lists `running_lora_adapters`,
//!   `waiting_lora_adapters`, from the series with the newest timestamp value.
//!
//! Anything else is skipped; a line that does not parse is skipped too (one odd exporter line
//! must not blind the router).

/// A backend's load as of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scraped {
    pub waiting: f64,
    pub running: f64,
    pub kv_usage: Option<f64>,
    /// KV-cache capacity in tokens, from `vllm:cache_config_info`.
    pub kv_tokens: Option<u64>,
    pub max_lora: Option<u32>,
    pub running_adapters: Vec<String>,
    pub waiting_adapters: Vec<String>,
}

/// Parses the exposition text. `None` when none of vLLM's load gauges is there (not a vLLM
/// server, or metrics are off), so the router does not mistake silence for an idle backend.
pub fn parse(text: &str) -> Option<Scraped> {
    let mut s = Scraped::default();
    let mut seen = false;
    let mut lora_ts = f64::NEG_INFINITY;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        match sample.name {
            "vllm:num_requests_waiting" => {
                s.waiting += sample.value;
                seen = true;
            }
            "vllm:num_requests_running" => {
                s.running += sample.value;
                seen = true;
            }
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                s.kv_usage = Some(s.kv_usage.map_or(sample.value, |k| k.max(sample.value)));
                seen = true;
            }
            "vllm:cache_config_info" => {
                let blocks = sample
                    .label("num_gpu_blocks")
                    .and_then(|v| v.parse::<u64>().ok());
                let size = sample
                    .label("block_size")
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(b), Some(z)) = (blocks, size) {
                    s.kv_tokens = Some(s.kv_tokens.unwrap_or(0) + b * z);
                }
            }
            "vllm:lora_requests_info" if sample.value >= lora_ts => {
                lora_ts = sample.value;
                s.max_lora = sample.label("max_lora").and_then(|v| v.parse().ok());
                s.running_adapters = list(sample.label("running_lora_adapters"));
                s.waiting_adapters = list(sample.label("waiting_lora_adapters"));
            }
            _ => {}
        }
    }
    seen.then_some(s)
}

fn list(v: Option<String>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// One sample line: `name{label="value",...} value [timestamp]`.
struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
        let name = &line[..name_end];
        let rest = &line[name_end..];
        let (labels, rest) = if rest.starts_with('{') {
            let close = closing_brace(rest)?;
            (&rest[1..close], &rest[close + 1..])
        } else {
            ("", rest)
        };
        let value = rest.split_whitespace().next()?;
        let value = match value {
            "NaN" => return None,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().ok()?,
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    /// The unescaped value of label `key`.
    fn label(&self, key: &str) -> Option<String> {
        let mut rest = self.labels;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if rest.is_empty() {
                return None;
            }
            let eq = rest.find('=')?;
            let k = rest[..eq].trim();
            let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            if k == key {
                return Some(value);
            }
            rest = &after[end + 1..];
        }
    }
}

/// Index of the `}` closing a label set, skipping quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.9
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="4096"} 1.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql, chat",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters="x"} 1.6e9
vllm:prompt_tokens_total{engine="0",model_name="weird \"quoted} name"} 12
"#;

    #[test]
    fn reads_vllm_load() {
        let s = parse(VLLM).unwrap();
        assert_eq!(s.running, 9.0);
        assert_eq!(s.waiting, 3.0);
        assert_eq!(s.kv_usage, Some(0.9));
        assert_eq!(s.kv_tokens, Some(4096 * 16));
        assert_eq!(s.max_lora, Some(2));
        assert_eq!(s.running_adapters, vec!["sql", "chat"]);
        assert!(s.waiting_adapters.is_empty());
    }

    #[test]
    fn old_kv_name_and_garbage() {
        let s = parse("vllm:gpu_cache_usage_perc 0.5\nnot a metric line\nvllm:num_requests_waiting{a=\"b\" 3\n").unwrap();
        assert_eq!(s.kv_usage, Some(0.5));
        assert_eq!(s.waiting, 0.0);
        assert!(parse("# nothing\nprocess_cpu_seconds_total 3\n").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn label_escapes() {
        let s = Sample::parse(r#"m{a="x\"y\\z",b="2"} 1"#).unwrap();
        assert_eq!(s.label("a").as_deref(), Some("x\"y\\z"));
        assert_eq!(s.label("b").as_deref(), Some("2"));
        assert_eq!(s.label("c"), None);
    }

    #[test]
    fn reads_the_simulator() {
        // The simulator is the stand-in for vLLM in tests: its metrics must parse.
        let text = "vllm:num_requests_running{engine=\"0\",model_name=\"sim\"} 1\nvllm:num_requests_waiting{engine=\"0\",model_name=\"sim\"} 0\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"sim\"} 0.25\n";
        let s = parse(text).unwrap();
        assert_eq!((s.running, s.waiting, s.kv_usage), (1.0, 0.0, Some(0.25)));
    }
}
