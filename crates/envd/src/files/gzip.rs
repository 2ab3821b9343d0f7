//! Streaming gzip decoding of request bodies (`Content-Encoding: gzip`, spec 3.6): each input
//! chunk is inflated as it arrives, so a large upload is never held whole. Concatenated gzip
//! members are accepted, as Go's reader does; a truncated or corrupt body is an error.

use std::io::{self, Write};

use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use futures::{Stream, StreamExt};

/// Inflates a stream of gzip-compressed chunks.
pub fn gunzip<S>(input: S) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let state = (input, Some(MultiGzDecoder::new(Vec::new())));
    futures::stream::try_unfold(state, |(mut input, mut decoder)| async move {
        loop {
            let Some(dec) = decoder.as_mut() else {
                return Ok(None);
            };
            match input.next().await {
                Some(chunk) => {
                    dec.write_all(&chunk?)?;
                    let out = std::mem::take(dec.get_mut());
                    if !out.is_empty() {
                        return Ok(Some((Bytes::from(out), (input, decoder))));
                    }
                }
                None => {
                    let out = match decoder.take() {
                        Some(dec) => dec.finish()?,
                        None => Vec::new(),
                    };
                    return Ok((!out.is_empty()).then(|| (Bytes::from(out), (input, None))));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).expect("compress");
        enc.finish().expect("finish")
    }

    async fn inflate(chunks: Vec<Vec<u8>>) -> io::Result<Vec<u8>> {
        let input = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
        let mut out = Vec::new();
        let mut s = std::pin::pin!(gunzip(input));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn inflates_chunked_and_multi_member_bodies() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let packed = gz(&data);
        let chunks: Vec<Vec<u8>> = packed.chunks(777).map(<[u8]>::to_vec).collect();
        assert_eq!(inflate(chunks).await.expect("inflate"), data);

        let mut two = gz(b"hello ");
        two.extend(gz(b"world"));
        assert_eq!(inflate(vec![two]).await.expect("multi"), b"hello world");
    }

    #[tokio::test]
    async fn truncated_or_garbage_bodies_fail() {
        let packed = gz(b"some text that is long enough to matter");
        assert!(inflate(vec![packed[..packed.len() - 4].to_vec()])
            .await
            .is_err());
        assert!(inflate(vec![b"not gzip at all".to_vec()]).await.is_err());
    }
}
