//! Reading stdin without hanging: a runtime that never closes it (or a
//! terminal) must not keep the plugin waiting forever.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The largest netconf read (a real one is a few KiB; a conflist with a big
/// prevResult tens of KiB).
pub const MAX_STDIN: usize = 4 * 1024 * 1024;
/// How long stdin may stay open without reaching its end.
pub const STDIN_DEADLINE: Duration = Duration::from_secs(10);

/// Reads `input` to its end, at most `max` bytes and for at most `deadline`.
/// Returns what was read and, if the end was not reached, why.
pub fn read_bounded<R: Read + AsFd>(
    mut input: R,
    max: usize,
    deadline: Duration,
) -> (Vec<u8>, Option<String>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let ready = {
            let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => {
                    return (
                        out,
                        Some(format!("stdin was not closed within {deadline:?}")),
                    )
                }
                Ok(_) => {
                    let ev = fds[0].revents().unwrap_or(PollFlags::empty());
                    // A closed or invalid descriptor: nothing (more) to read.
                    if ev.contains(PollFlags::POLLNVAL) {
                        return (out, None);
                    }
                    true
                }
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => return (out, Some(format!("polling stdin: {e}"))),
            }
        };
        if !ready {
            continue;
        }
        match input.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => {
                if out.len() + n > max {
                    return (out, Some(format!("stdin is larger than {max} bytes")));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // An unreadable stdin (closed, a directory): VERSION works
            // without it; the other verbs report it as undecodable.
            Err(e) => return (out, Some(format!("reading stdin: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn reads_to_the_end() {
        let (r, mut w) = pipe();
        w.write_all(b"{\"a\":1}").unwrap();
        drop(w);
        let (data, problem) = read_bounded(r, 100, Duration::from_secs(5));
        assert_eq!(data, b"{\"a\":1}");
        assert!(problem.is_none());
    }

    #[test]
    fn an_open_pipe_does_not_hang() {
        let (r, mut w) = pipe();
        w.write_all(b"{").unwrap();
        let t = Instant::now();
        let (data, problem) = read_bounded(r, 100, Duration::from_millis(200));
        assert_eq!(data, b"{");
        assert!(problem.unwrap().contains("not closed"));
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(w);
    }

    #[test]
    fn size_is_capped() {
        let (r, mut w) = pipe();
        let t = std::thread::spawn(move || {
            let _ = w.write_all(&[b' '; 10_000]);
        });
        let (_, problem) = read_bounded(r, 100, Duration::from_secs(5));
        assert!(problem.unwrap().contains("larger"));
        t.join().unwrap();
    }
}
