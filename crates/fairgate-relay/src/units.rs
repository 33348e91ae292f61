//! Each surface's own unit, read from the request or the answer: images made
//! (`/v1/images/*`: the answer's `data`, else the request's `n`), seconds of audio
//! (`/v1/audio/transcriptions` and `/translations`: the answer's `usage.seconds` or `duration`,
//! else the uploaded WAV's length), characters spoken (`/v1/audio/speech`: the request's
//! `input`). Token surfaces (chat, completions, embeddings, responses, rerank, score) count
//! tokens from their `usage`, read elsewhere ([`crate::usage_from_body`]).

use fairgate_types::Unit;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::model::for_each_part;

/// The unit a path is measured in.
pub fn unit_of_path(path: &str) -> Unit {
    let p = path.trim_end_matches('/');
    if p.starts_with("/v1/images/") {
        Unit::Images
    } else if p == "/v1/audio/transcriptions" || p == "/v1/audio/translations" {
        Unit::AudioSeconds
    } else if p == "/v1/audio/speech" {
        Unit::Characters
    } else {
        Unit::Tokens
    }
}

fn is_form(content_type: &str) -> bool {
    content_type
        .trim_start()
        .get(..19)
        .is_some_and(|m| m.eq_ignore_ascii_case("multipart/form-data"))
}

/// What the request asks for in its unit, when the request says: the images it asks for
/// (`n`, default 1), the characters it asks to be spoken, the seconds of a WAV upload.
/// `None` for token units and when the request does not tell.
pub fn request_units(unit: Unit, content_type: &str, body: &[u8]) -> Option<u64> {
    match unit {
        Unit::Images => {
            if is_form(content_type) {
                let mut n = None;
                for_each_part(content_type, body, |part| {
                    if part.name.as_deref() == Some("n") {
                        n = std::str::from_utf8(part.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok());
                    }
                    Ok(())
                })
                .ok()?;
                Some(n.unwrap_or(1))
            } else {
                #[derive(Deserialize)]
                struct Ask {
                    n: Option<u64>,
                }
                let ask: Ask = serde_json::from_slice(body).ok()?;
                Some(ask.n.unwrap_or(1))
            }
        }
        Unit::Characters => {
            #[derive(Deserialize)]
            struct Ask<'a> {
                #[serde(borrow)]
                input: std::borrow::Cow<'a, str>,
            }
            let ask: Ask = serde_json::from_slice(body).ok()?;
            Some(ask.input.chars().count() as u64)
        }
        Unit::AudioSeconds => {
            if !is_form(content_type) {
                return None;
            }
            let mut secs = None;
            for_each_part(content_type, body, |part| {
                if part.name.as_deref() == Some("file") {
                    secs = wav_seconds(part.value);
                }
                Ok(())
            })
            .ok()?;
            secs
        }
        Unit::Tokens | Unit::Calls => None,
    }
}

/// What the answer says was served, in its unit: the images in `data`, the audio's seconds
/// (`usage: {"type": "duration", "seconds": s}` as OpenAI and vLLM report it, else
/// `verbose_json`'s `duration`, a number or a numeric string), rounded up to whole seconds.
pub fn answer_units(unit: Unit, body: &[u8]) -> Option<u64> {
    match unit {
        Unit::Images => {
            #[derive(Deserialize)]
            struct Answer {
                data: Vec<IgnoredAny>,
            }
            let a: Answer = serde_json::from_slice(body).ok()?;
            Some(a.data.len() as u64)
        }
        Unit::AudioSeconds => {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Num {
                N(f64),
                S(String),
            }
            impl Num {
                fn value(&self) -> Option<f64> {
                    match self {
                        Num::N(n) => Some(*n),
                        Num::S(s) => s.trim().parse().ok(),
                    }
                }
            }
            #[derive(Deserialize)]
            struct Usage {
                #[serde(rename = "type")]
                kind: Option<String>,
                seconds: Option<Num>,
            }
            #[derive(Deserialize)]
            struct Answer {
                usage: Option<Usage>,
                duration: Option<Num>,
            }
            let a: Answer = serde_json::from_slice(body).ok()?;
            let from_usage = a
                .usage
                .filter(|u| u.kind.as_deref().is_none_or(|k| k == "duration"))
                .and_then(|u| u.seconds)
                .and_then(|s| s.value());
            let secs = from_usage.or_else(|| a.duration.and_then(|d| d.value()))?;
            (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
        }
        Unit::Tokens | Unit::Characters | Unit::Calls => None,
    }
}

/// The length of a RIFF/WAVE file, rounded up to whole seconds: its `data` chunk's size over
/// the `fmt ` chunk's byte rate. `None` for anything else (other formats are left to the
/// backend's report).
pub fn wav_seconds(b: &[u8]) -> Option<u64> {
    if b.get(..4)? != b"RIFF" || b.get(8..12)? != b"WAVE" {
        return None;
    }
    let u32_at =
        |i: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
    let mut at = 12usize;
    let mut byte_rate = None;
    while at + 8 <= b.len() {
        let id = b.get(at..at + 4)?;
        let size = u32_at(at + 4)?;
        let body = at + 8;
        if id == b"fmt " {
            byte_rate = u32_at(body + 8).filter(|r| *r > 0);
        } else if id == b"data" {
            // The header's size, so a file cut short (a spooled upload's first bytes) still
            // says its length; a stream writer may leave it at its maximum, and then the data
            // runs to the end.
            let len = if size == u32::MAX {
                (b.len() - body) as u64
            } else {
                u64::from(size)
            };
            let rate = u64::from(byte_rate?);
            return Some(len.div_ceil(rate));
        }
        // Chunks are padded to an even length.
        at = body
            .checked_add(size as usize)?
            .checked_add(size as usize & 1)?;
    }
    None
}

/// A WAV file of `secs` seconds of silence at `rate` bytes per second (8-bit mono PCM), for
/// tests and the simulator.
pub fn wav_of_seconds(secs: u64, rate: u32) -> Vec<u8> {
    let data = (secs * u64::from(rate)) as usize;
    let mut v = Vec::with_capacity(44 + data);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&((36 + data) as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.to_le_bytes()); // sample rate
    v.extend_from_slice(&rate.to_le_bytes()); // byte rate (1 byte per sample)
    v.extend_from_slice(&1u16.to_le_bytes()); // block align
    v.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data as u32).to_le_bytes());
    v.resize(44 + data, 128);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, value) in parts {
            b.extend_from_slice(
                format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--B--\r\n");
        b
    }

    #[test]
    fn paths_have_units() {
        assert_eq!(unit_of_path("/v1/images/generations"), Unit::Images);
        assert_eq!(unit_of_path("/v1/images/edits"), Unit::Images);
        assert_eq!(unit_of_path("/v1/audio/transcriptions"), Unit::AudioSeconds);
        assert_eq!(unit_of_path("/v1/audio/translations/"), Unit::AudioSeconds);
        assert_eq!(unit_of_path("/v1/audio/speech"), Unit::Characters);
        for p in ["/v1/rerank", "/score", "/v1/responses", "/v1/embeddings"] {
            assert_eq!(unit_of_path(p), Unit::Tokens, "{p}");
        }
    }

    #[test]
    fn wav_length_is_data_over_byte_rate() {
        assert_eq!(wav_seconds(&wav_of_seconds(3, 8000)), Some(3));
        assert_eq!(wav_seconds(&wav_of_seconds(0, 8000)), Some(0));
        // A partial second rounds up.
        let mut w = wav_of_seconds(2, 1000);
        w.extend_from_slice(&[128; 10]);
        let n = (2000 + 10) as u32;
        w[40..44].copy_from_slice(&n.to_le_bytes());
        assert_eq!(wav_seconds(&w), Some(3));
        // Cut short after its header: the header still says the length.
        assert_eq!(wav_seconds(&wav_of_seconds(5, 8000)[..1000]), Some(5));
        // Not a WAV, or truncated before its data chunk.
        assert_eq!(wav_seconds(b"ID3\x03mp3 data"), None);
        assert_eq!(wav_seconds(&wav_of_seconds(1, 8000)[..30]), None);
        assert_eq!(wav_seconds(b""), None);
    }

    #[test]
    fn request_units_read_n_input_and_the_upload() {
        assert_eq!(
            request_units(
                Unit::Images,
                "application/json",
                br#"{"prompt":"a cat","n":3}"#
            ),
            Some(3)
        );
        assert_eq!(
            request_units(Unit::Images, "application/json", br#"{"prompt":"a cat"}"#),
            Some(1)
        );
        assert_eq!(
            request_units(
                Unit::Characters,
                "application/json",
                br#"{"input":"h\u00e9llo"}"#
            ),
            Some(5)
        );
        let wav = wav_of_seconds(4, 8000);
        let body = form(&[("file", &wav), ("model", b"whisper")]);
        assert_eq!(
            request_units(Unit::AudioSeconds, "multipart/form-data; boundary=B", &body),
            Some(4)
        );
        let mp3 = form(&[("file", b"ID3 not a wav"), ("model", b"whisper")]);
        assert_eq!(
            request_units(Unit::AudioSeconds, "multipart/form-data; boundary=B", &mp3),
            None
        );
        let edit = form(&[("image", b"png"), ("n", b"2")]);
        assert_eq!(
            request_units(Unit::Images, "multipart/form-data; boundary=B", &edit),
            Some(2)
        );
        assert_eq!(request_units(Unit::Tokens, "application/json", b"{}"), None);
    }

    #[test]
    fn answer_units_read_data_and_duration() {
        assert_eq!(
            answer_units(
                Unit::Images,
                br#"{"created":1,"data":[{"b64_json":"x"},{"url":"u"}]}"#
            ),
            Some(2)
        );
        assert_eq!(
            answer_units(
                Unit::AudioSeconds,
                br#"{"text":"hi","usage":{"type":"duration","seconds":7}}"#
            ),
            Some(7)
        );
        assert_eq!(
            answer_units(Unit::AudioSeconds, br#"{"text":"hi","duration":"4.2"}"#),
            Some(5)
        );
        assert_eq!(
            answer_units(Unit::AudioSeconds, br#"{"text":"hi","duration":2.0}"#),
            Some(2)
        );
        // Token usage is not a duration.
        assert_eq!(
            answer_units(
                Unit::AudioSeconds,
                br#"{"text":"hi","usage":{"type":"tokens","input_tokens":3}}"#
            ),
            None
        );
        assert_eq!(answer_units(Unit::AudioSeconds, b"plain text"), None);
    }
}
