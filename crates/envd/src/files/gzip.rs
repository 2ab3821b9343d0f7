//! Streaming gzip decoding of request bodies (`Content-Encoding: gzip`, spec 3.6): the body is
//! inflated as it is consumed, in output chunks of at most [`OUTPUT_CHUNK`] bytes, so neither a
//! large upload nor a decompression bomb is ever held whole in memory. Concatenated gzip members
//! are accepted, as Go's reader does; a truncated or corrupt body is an error.

use std::io;

use async_compression::tokio::bufread::GzipDecoder;
use bytes::Bytes;
use futures::Stream;
use tokio_util::io::{ReaderStream, StreamReader};

/// Largest chunk of inflated output produced at once.
pub const OUTPUT_CHUNK: usize = 64 * 1024;

/// Inflates a stream of gzip-compressed chunks into chunks of at most [`OUTPUT_CHUNK`] bytes.
/// Output is produced only as fast as the returned stream is polled.
pub fn gunzip<S>(input: S) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let mut decoder = GzipDecoder::new(StreamReader::new(input));
    decoder.multiple_members(true);
    ReaderStream::with_capacity(decoder, OUTPUT_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use futures::StreamExt;
    use std::io::Write;

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

    #[tokio::test]
    async fn bombs_inflate_in_bounded_chunks() {
        // 32 MiB of zeros compress to ~32 KiB; sent as one chunk, the output must still come out
        // in bounded pieces rather than as one huge allocation.
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..32 {
            enc.write_all(&zeros).expect("compress");
        }
        let packed = enc.finish().expect("finish");
        assert!(packed.len() < 1 << 20);
        let input = futures::stream::iter([Ok(Bytes::from(packed))]);
        let mut s = std::pin::pin!(gunzip(input));
        let (mut total, mut largest) = (0usize, 0usize);
        while let Some(chunk) = s.next().await {
            let chunk = chunk.expect("inflate");
            assert!(chunk.iter().all(|b| *b == 0));
            total += chunk.len();
            largest = largest.max(chunk.len());
        }
        assert_eq!(total, 32 << 20);
        assert!(largest <= OUTPUT_CHUNK, "a chunk of {largest} bytes");
    }

    #[tokio::test]
    async fn multi_member_bodies_split_anywhere() {
        let mut body = gz(b"first member, ");
        body.extend(gz(b"second member, "));
        body.extend(gz(b"third"));
        for split in [1, 3, 10, 17, body.len() - 1] {
            let chunks = vec![body[..split].to_vec(), body[split..].to_vec()];
            assert_eq!(
                inflate(chunks).await.expect("multi"),
                b"first member, second member, third"
            );
        }
    }
}
