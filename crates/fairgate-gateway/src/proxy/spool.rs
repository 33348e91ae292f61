//! Large multipart uploads (audio to transcribe, images to edit) go to a temporary file as
//! they arrive rather than into memory. The gateway still has to read the form's `model`
//! (and `n`, and the first bytes of the file), which may come after the file: it keeps the
//! body's first and last [`KEEP`] bytes, and checks, with a delimiter scan over the whole
//! stream, that everything it did not keep is the inside of one file's value. Those two ends
//! joined are then the same form with that one value cut short (the *skeleton*), and the
//! form is read from it exactly as from a whole body. A form that does not have that shape
//! (fields between two large files, a huge non-file field) is read back into memory, within
//! `max_body_bytes` as before.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// Bodies up to this size stay in memory.
pub(crate) const SPOOL_AT: usize = 1 << 20;
/// Bytes kept in memory from each end of a spooled body.
const KEEP: usize = 256 * 1024;
/// A spooled form with more parts than this is read back into memory.
const MAX_DELIMITERS: usize = 4096;

/// An upload as read: in memory, or on disk with its skeleton in memory.
pub(super) enum Upload {
    Memory(Bytes),
    Spooled {
        skeleton: Bytes,
        file: Arc<SpoolFile>,
    },
}

/// A spooled body on disk; the file is removed when the last holder lets go (an open handle
/// still reads it).
pub(crate) struct SpoolFile {
    path: tempfile::TempPath,
    pub(crate) len: u64,
}

impl SpoolFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Finds `\r\n--boundary` in a stream delivered in pieces, by absolute offset (the body is
/// read as if it began with `\r\n`, so the first delimiter is found at offset -2).
struct Delimiters {
    delim: Vec<u8>,
    carry: Vec<u8>,
    /// Absolute offset of `carry[0]`.
    carry_at: i64,
    found: Vec<i64>,
    overflow: bool,
}

impl Delimiters {
    fn new(boundary: &str) -> Delimiters {
        Delimiters {
            delim: format!("\r\n--{boundary}").into_bytes(),
            carry: b"\r\n".to_vec(),
            carry_at: -2,
            found: Vec::new(),
            overflow: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        // The carry is shorter than a delimiter, so every match includes a new byte: none is
        // found twice.
        for p in memchr::memmem::find_iter(&window, &self.delim) {
            if self.found.len() >= MAX_DELIMITERS {
                self.overflow = true;
                break;
            }
            self.found.push(self.carry_at + p as i64);
        }
        let keep = (self.delim.len() - 1).min(window.len());
        let cut = window.len() - keep;
        self.carry_at += cut as i64;
        self.carry = window.split_off(cut);
    }
}

/// The skeleton of a spooled form (`head` and `tail`, the body's two ends, joined), or `None`
/// when the part in between is not one file's value.
fn skeleton(head: &[u8], tail: &[u8], len: u64, d: &Delimiters) -> Option<Bytes> {
    if d.overflow {
        return None;
    }
    let dl = d.delim.len() as i64;
    let head_end = head.len() as i64;
    let tail_start = len as i64 - tail.len() as i64;
    // Every delimiter lies wholly in one of the two ends.
    if d.found
        .iter()
        .any(|&o| !(o + dl <= head_end || o >= tail_start))
    {
        return None;
    }
    // The part that spans the middle: the last one starting in the head. Its headers end in
    // the head, and it is a file.
    let last = *d.found.iter().rfind(|&&o| o + dl <= head_end)?;
    let after = usize::try_from(last + dl).ok()?;
    let rest = head.get(after..)?;
    let headers_end = memchr::memmem::find(rest, b"\r\n\r\n")?;
    let headers = std::str::from_utf8(&rest[..headers_end]).ok()?;
    if !headers.to_ascii_lowercase().contains("filename=") {
        return None;
    }
    let mut s = BytesMut::with_capacity(head.len() + tail.len());
    s.extend_from_slice(head);
    s.extend_from_slice(tail);
    Some(s.freeze())
}

fn io_error(e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("could not spool the upload: {e}"))
}

/// Reads a multipart body under `limit`, to a temporary file in `dir` once it passes
/// [`SPOOL_AT`]. `read_error` classifies a failed read as the in-memory path does.
pub(super) async fn read_upload(
    mut body: Body,
    limit: usize,
    dir: &Path,
    boundary: &str,
    read_error: impl Fn(axum::Error) -> ApiError,
) -> Result<Upload, ApiError> {
    let mut mem = BytesMut::new();
    let mut delims = Delimiters::new(boundary);
    let mut len = 0usize;
    let mut spool: Option<(tokio::fs::File, tempfile::TempPath, Vec<u8>)> = None;
    let mut head: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(&read_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
        delims.push(&data);
        match spool.as_mut() {
            None => {
                mem.extend_from_slice(&data);
                if mem.len() > SPOOL_AT {
                    std::fs::create_dir_all(dir).map_err(io_error)?;
                    let (file, path) = tempfile::Builder::new()
                        .prefix("fairgate-upload-")
                        .tempfile_in(dir)
                        .map_err(io_error)?
                        .into_parts();
                    let mut file = tokio::fs::File::from_std(file);
                    file.write_all(&mem).await.map_err(io_error)?;
                    head = mem[..KEEP].to_vec();
                    let tail = mem[mem.len() - KEEP..].to_vec();
                    mem = BytesMut::new();
                    spool = Some((file, path, tail));
                }
            }
            Some((file, _, tail)) => {
                file.write_all(&data).await.map_err(io_error)?;
                tail.extend_from_slice(&data);
                if tail.len() > 2 * KEEP {
                    tail.drain(..tail.len() - KEEP);
                }
            }
        }
    }
    let Some((mut file, path, mut tail)) = spool else {
        return Ok(Upload::Memory(mem.freeze()));
    };
    file.flush().await.map_err(io_error)?;
    drop(file);
    if tail.len() > KEEP {
        tail.drain(..tail.len() - KEEP);
    }
    match skeleton(&head, &tail, len as u64, &delims) {
        Some(skeleton) => Ok(Upload::Spooled {
            skeleton,
            file: Arc::new(SpoolFile {
                path,
                len: len as u64,
            }),
        }),
        // Not the shape the skeleton can stand for: read as a whole, as any body is.
        None => Ok(Upload::Memory(Bytes::from(
            tokio::fs::read(&path).await.map_err(io_error)?,
        ))),
    }
}

/// A request body that streams a spooled file, read afresh for each attempt.
pub(crate) async fn file_body(f: &SpoolFile) -> std::io::Result<crate::upstream::UpBody> {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(f.path()).await?;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = BytesMut::zeroed(64 * 1024);
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(buf.freeze())),
                    Some(file),
                ))
            }
            // The body ends short of its Content-Length: the backend sees a broken upload
            // and the attempt fails, rather than a shorter file being taken for the whole.
            Err(e) => {
                tracing::warn!(error = %e, "reading a spooled upload failed");
                None
            }
        }
    });
    Ok(StreamBody::new(chunks).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in parts {
            let f = file
                .map(|f| format!("; filename=\"{f}\""))
                .unwrap_or_default();
            b.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{f}\r\n\r\n")
                    .as_bytes(),
            );
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    async fn read_in_pieces(body: Vec<u8>, piece: usize, dir: &Path) -> Upload {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        read_upload(body, 64 << 20, dir, "XyZ", |e| {
            ApiError::BodyRead(e.to_string())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn model_of(body: &[u8]) -> Option<String> {
        fairgate_relay::read_model("multipart/form-data; boundary=XyZ", None, body)
            .unwrap()
            .model
    }

    #[tokio::test]
    async fn a_large_file_is_spooled_and_fields_on_both_sides_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let wav = fairgate_relay::units::wav_of_seconds(300, 8000); // 2.4 MB
        let body = form(&[
            ("response_format", None, b"json".to_vec()),
            ("file", Some("a.wav"), wav.clone()),
            ("model", None, b"whisper".to_vec()),
        ]);
        for piece in [1000, 65_536, 7_777] {
            let Upload::Spooled { skeleton, file } =
                read_in_pieces(body.clone(), piece, dir.path()).await
            else {
                panic!("not spooled");
            };
            assert_eq!(file.len as usize, body.len());
            assert_eq!(
                std::fs::read(file.path()).unwrap(),
                body,
                "the file is the body"
            );
            assert!(skeleton.len() <= 2 * KEEP);
            assert_eq!(model_of(&skeleton).as_deref(), Some("whisper"));
            // The WAV header is in the skeleton, and says the real length.
            let units = fairgate_relay::request_units(
                fairgate_types::Unit::AudioSeconds,
                "multipart/form-data; boundary=XyZ",
                &skeleton,
            );
            assert_eq!(units, Some(300));
            let path = file.path().to_owned();
            drop(file);
            assert!(!path.exists(), "the spool file goes with its last holder");
        }
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_and_odd_forms_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let small = form(&[
            ("model", None, b"m".to_vec()),
            ("file", Some("a"), vec![7; 1000]),
        ]);
        assert!(matches!(
            read_in_pieces(small.clone(), 100, dir.path()).await,
            Upload::Memory(b) if b == small
        ));
        // A field between two large files is in the part the skeleton would cut: the body is
        // read whole, and the field is seen.
        let odd = form(&[
            ("file", Some("a"), vec![1; 700_000]),
            ("model", None, b"hidden".to_vec()),
            ("file2", Some("b"), vec![2; 700_000]),
        ]);
        let Upload::Memory(b) = read_in_pieces(odd.clone(), 4096, dir.path()).await else {
            panic!("spooled a form the skeleton cannot stand for");
        };
        assert_eq!(b, odd);
        assert_eq!(model_of(&b).as_deref(), Some("hidden"));
        // A huge field that is not a file is not cut either.
        let big_field = form(&[("model", None, vec![b'x'; 1_500_000])]);
        assert!(matches!(
            read_in_pieces(big_field, 4096, dir.path()).await,
            Upload::Memory(_)
        ));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file left behind"
        );
    }

    #[tokio::test]
    async fn over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let body = Body::from(vec![0u8; 3 << 20]);
        let r = read_upload(body, 2 << 20, dir.path(), "XyZ", |e| {
            ApiError::BodyRead(e.to_string())
        })
        .await;
        assert!(matches!(r, Err(ApiError::BodyTooLarge(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn delimiters_are_found_across_any_split() {
        let body = form(&[("a", None, b"1".to_vec()), ("b", None, b"22".to_vec())]);
        let mut whole = Delimiters::new("XyZ");
        whole.push(&body);
        for piece in 1..12 {
            let mut d = Delimiters::new("XyZ");
            for c in body.chunks(piece) {
                d.push(c);
            }
            assert_eq!(d.found, whole.found, "piece {piece}");
        }
        assert_eq!(whole.found.len(), 3);
        assert_eq!(whole.found[0], -2);
    }
}
