//! The `pyexec` client's own stdin, stdout and stderr, read and written with as few
//! thread hand-overs as possible, because an interactive round trip pays for each one.
//!
//! `tokio::io::stdin` and `stdout` do every read and write on tokio's blocking pool:
//! a line typed (or piped) into `pyexec` wakes a pool thread, which then wakes the
//! runtime; a line of output goes the other way. On a small VM each wake is a few tens of
//! microseconds, a sizeable part of an echo's round trip. Here:
//!
//! * stdin that is a pipe or a socket is watched by the runtime's own epoll and read on
//!   the runtime thread, asking the kernel first how much is there (`FIONREAD`) so the
//!   read never blocks. The descriptor is not switched to non-blocking mode: its open
//!   file description is shared with whoever gave it to us (a shell, a pipeline) and
//!   would stay non-blocking for them. A terminal or a file keeps the blocking pool.
//! * stdout and stderr that are pipes or sockets are written on the runtime thread with
//!   `RWF_NOWAIT` (non-blocking for that one call, the descriptor's flags untouched),
//!   waiting for epoll to report room when the reader is behind: a slow reader slows the
//!   session down (the backpressure we want) and no thread is woken per write. Anything
//!   else (a terminal, a file) is written directly when `poll` says a short write cannot
//!   block, else under `block_in_place`, so that a stuck terminal does not stall the
//!   runtime.

// This module is the client's raw I/O: fstat, ioctl(FIONREAD), poll and pwritev2 on
// descriptors it borrows have no safe wrappers. Every unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A descriptor we read or write but never close (0, 1 or 2: open for the whole process).
struct Borrowed(ManuallyDrop<std::fs::File>);

impl Borrowed {
    fn new(fd: RawFd) -> Self {
        // SAFETY: the caller passes a descriptor that stays open for the life of the
        // process; ManuallyDrop never closes it.
        Borrowed(ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) }))
    }
}

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Whether `fd` is a pipe (or FIFO) or a socket: something epoll can watch and
/// `FIONREAD` can size.
fn is_pipe_or_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
}

/// `fd` registered with the runtime's epoll for `interest`, when it is a pipe or socket
/// (`None` otherwise, or when epoll refuses it).
fn watch(fd: RawFd, interest: tokio::io::Interest) -> Option<AsyncFd<Borrowed>> {
    if !is_pipe_or_socket(fd) {
        return None;
    }
    // SAFETY: `fd` stays open and the same for the life of the process (see `Borrowed`),
    // hence for the life of the registration.
    unsafe { AsyncFd::register_with_interest(Borrowed::new(fd), interest) }.ok()
}

/// Bytes waiting to be read on `fd`.
fn available(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// The script's stdin as `pyexec` reads it.
pub enum Stdin {
    /// A pipe or socket, read on the runtime thread when epoll says it is readable.
    Polled(PolledIn),
    /// Anything else (a terminal, a file), read on tokio's blocking pool.
    Pool(tokio::io::Stdin),
}

impl Stdin {
    /// fd 0, polled when it can be (this needs a runtime with I/O enabled).
    pub fn open() -> Self {
        match PolledIn::new(0) {
            Some(p) => Stdin::Polled(p),
            None => Stdin::Pool(tokio::io::stdin()),
        }
    }
}

impl AsyncRead for Stdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdin::Polled(p) => Pin::new(p).poll_read(cx, buf),
            Stdin::Pool(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// A blocking pipe or socket read without blocking: wait for epoll's readiness, then
/// read no more than `FIONREAD` says is there. Readiness with nothing to read and the
/// writer gone (hang-up) is end of file; with the writer still there (another reader took
/// the bytes), the readiness is cleared and we wait again.
pub struct PolledIn {
    fd: AsyncFd<Borrowed>,
}

impl PolledIn {
    /// `None` when `fd` is not a pipe or socket, or epoll refuses it.
    pub fn new(fd: RawFd) -> Option<Self> {
        watch(fd, tokio::io::Interest::READABLE).map(|fd| PolledIn { fd })
    }
}

impl AsyncRead for PolledIn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let fd = guard.get_inner().as_raw_fd();
            let waiting = available(fd)?;
            if waiting == 0 {
                if guard.ready().is_read_closed() {
                    // Hang-up with nothing left: end of file.
                    return Poll::Ready(Ok(()));
                }
                guard.clear_ready();
                continue;
            }
            let want = waiting.min(buf.remaining());
            let dst = buf.initialize_unfilled_to(want);
            // Never blocks: at least `want` bytes are waiting and nobody else reads.
            let n = (&guard.get_inner().0 as &std::fs::File).read(dst)?;
            buf.advance(n);
            if n == waiting {
                guard.clear_ready();
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// Our stdout or stderr, written straight to its descriptor with no buffer.
pub struct RawOut {
    fd: Borrowed,
    /// The same descriptor watched by epoll for room, when it is a pipe or socket and
    /// the kernel takes non-blocking writes on it (`RWF_NOWAIT`).
    polled: Option<AsyncFd<Borrowed>>,
}

impl RawOut {
    /// `fd` must stay open for the life of the process (1 or 2). Needs a runtime with I/O
    /// enabled when `fd` is a pipe or socket.
    pub fn new(fd: RawFd) -> Self {
        let polled = watch(fd, tokio::io::Interest::WRITABLE);
        RawOut {
            fd: Borrowed::new(fd),
            polled,
        }
    }

    /// Whether a write of `len` bytes is sure not to block: short enough to be atomic on
    /// a pipe (`PIPE_BUF`), and `poll` finds room for it.
    fn cannot_block(&self, len: usize) -> bool {
        if len > libc::PIPE_BUF {
            return false;
        }
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd we own, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLOUT != 0
    }
}

/// Writes what fits without waiting (`RWF_NOWAIT`, per call: the descriptor's own flags,
/// shared with whoever else holds it, stay as they are).
fn write_nowait(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; offset -1 is "the current
    // position", as write(2).
    let n = unsafe { libc::pwritev2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl AsyncWrite for RawOut {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(polled) = &this.polled {
            loop {
                let mut guard = ready!(polled.poll_write_ready(cx))?;
                match write_nowait(guard.get_inner().as_raw_fd(), buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => break,
                    done => return Poll::Ready(done),
                }
            }
            // An older kernel without RWF_NOWAIT for this kind of file.
            this.polled = None;
        }
        let mut file: &std::fs::File = &this.fd.0;
        if this.cannot_block(buf.len()) {
            return Poll::Ready(file.write(buf));
        }
        // Writing may block (a full pipe): let the runtime move its other work elsewhere.
        Poll::Ready(tokio::task::block_in_place(|| file.write(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{IntoRawFd, OwnedFd};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Leaks the descriptor to the reader or writer under test, which never closes it;
    /// the test closes it by number at the end.
    fn leak(fd: OwnedFd) -> RawFd {
        fd.into_raw_fd()
    }

    fn close(fd: RawFd) {
        // SAFETY: a descriptor this test leaked and no longer uses.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn only_pipes_and_sockets_are_polled() {
        let file = tempfile::tempfile().unwrap();
        assert!(!is_pipe_or_socket(file.as_raw_fd()));
        let (r, _w) = pipe();
        assert!(is_pipe_or_socket(r.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(is_pipe_or_socket(a.as_raw_fd()));
    }

    #[tokio::test]
    async fn a_pipe_is_read_as_it_comes_then_end_of_file_once_the_writer_is_gone() {
        let (r, w) = pipe();
        let r = leak(r);
        let mut input = PolledIn::new(r).expect("a pipe is polled");
        let mut w = std::fs::File::from(w);

        w.write_all(b"first line\n").unwrap();
        let mut buf = [0u8; 64];
        let n = input.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first line\n");

        // More than one read's worth: comes in pieces, nothing lost or reordered.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            w.write_all(&big).unwrap();
            w.write_all(b"tail").unwrap();
            // Dropping the only write end: the reader sees end of file after the bytes.
        });
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = input.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= small.len());
            got.extend_from_slice(&small[..n]);
        }
        writer.join().unwrap();
        let want: Vec<u8> = (0..40_000u32)
            .map(|i| (i % 251) as u8)
            .chain(*b"tail")
            .collect();
        assert_eq!(got, want);
        drop(input);
        close(r);
    }

    #[tokio::test]
    async fn a_read_waits_for_data_instead_of_reporting_end_of_file() {
        let (r, w) = pipe();
        let r = leak(r);
        let mut input = PolledIn::new(r).unwrap();
        let mut w = std::fs::File::from(w);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = input.read(&mut buf).await.unwrap();
            buf[..n].to_vec()
        });
        // The reader is parked on readiness with the writer open: not at end of file.
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        w.write_all(b"late").unwrap();
        assert_eq!(reader.await.unwrap(), b"late");
        close(r);
    }

    /// Writes `big` through a `RawOut` on `w` while a thread reads it all from `r`.
    async fn write_through(w: RawFd, mut r: impl Read + Send + 'static, polled: bool) {
        let mut out = RawOut::new(w);
        assert_eq!(out.polled.is_some(), polled);
        out.write_all(b"short").await.unwrap();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"short");

        // 1 MiB into a 64 KiB pipe (or a socket's buffer): the writer must wait for the
        // reader, and every byte arrives in order.
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        let want = big.clone();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; want.len()];
            r.read_exact(&mut got).unwrap();
            got == want
        });
        out.write_all(&big).await.unwrap();
        assert!(reader.join().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_to_a_pipe_or_socket_wait_for_the_reader_without_blocking() {
        let (r, w) = pipe();
        let w = leak(w);
        write_through(w, std::fs::File::from(r), true).await;
        close(w);

        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let w = leak(OwnedFd::from(a));
        write_through(w, b, true).await;
        close(w);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_is_written_directly() {
        let file = tempfile::tempfile().unwrap();
        let mut out = RawOut::new(file.as_raw_fd());
        assert!(out.polled.is_none());
        out.write_all(b"into a file").await.unwrap();
        let mut back = String::new();
        let mut file = &file;
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "into a file");
    }
}
