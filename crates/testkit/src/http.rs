//! The server side of one HTTP/1.1 request, for the tests' small receivers (webhook sinks):
//! blocking reads over any stream, plain TCP or TLS.

use std::io::Read;

/// One request as a test receiver sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one request: the head up to the blank line, then Content-Length bytes of body (no
/// length: none). `None` when the peer closes or a read fails (timeout) before it is whole.
pub fn read_request(s: &mut impl Read) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut first = head.lines().next()?.split_whitespace();
    Some(Request {
        method: first.next()?.to_owned(),
        path: first.next()?.to_owned(),
        body: buf[head_end..head_end + len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_head_and_body_split_across_reads() {
        // A reader handing out 5 bytes at a time: the head and the body arrive in pieces.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(5).min(self.0.len() - self.1);
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let raw =
            b"POST /hook HTTP/1.1\r\ncontent-LENGTH: 11\r\nHost: x\r\n\r\n{\"a\":[1,2]}".to_vec();
        let r = read_request(&mut Trickle(raw, 0)).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert_eq!(r.body, b"{\"a\":[1,2]}");
        // Cut short: the peer closed before the body was whole.
        let cut = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc".to_vec();
        assert!(read_request(&mut Trickle(cut, 0)).is_none());
        // No Content-Length: an empty body.
        let get = b"GET /x HTTP/1.1\r\n\r\n".to_vec();
        assert!(read_request(&mut Trickle(get, 0)).unwrap().body.is_empty());
    }
}
