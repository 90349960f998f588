//! A real `redis-server` on loopback for tests: a fresh server on a free
//! port, with its files in a temporary directory, that a test can stop or
//! kill (an outage), pause (a hung server) and restart on the same port
//! (the recovery).
//!
//! ```no_run
//! use palisade_testkit::redis::RedisServer;
//! let mut redis = RedisServer::start()?;
//! assert!(redis.url().starts_with("redis://127.0.0.1:"));
//! redis.kill()?; // clients now see connection errors
//! redis.restart()?; // the same URL answers again, with an empty data set
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The server listens on `127.0.0.1` only and keeps nothing on disk
//! (`--save "" --appendonly no`), so a restart starts empty, as a Redis
//! without persistence does after a crash. The process is killed and the
//! directory removed when the [`RedisServer`] is dropped.
//!
//! Needs Debian's `redis-server` (`/usr/bin/redis-server`, or one on the
//! `PATH`): when it is missing, [`RedisServer::start`] fails with a line
//! saying what to install. This module speaks the few bytes of the Redis
//! protocol it needs (`PING`, `SHUTDOWN`) itself and does not depend on a
//! Redis client crate.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long the server may take to answer `PING` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful [`RedisServer::stop`] may take before the process
/// is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running (or stopped, until restarted) `redis-server`; see the module
/// docs.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port with a new temporary
    /// directory and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed (`NotFound`, saying how to install
    /// it), the directory cannot be created, or the server exits or does not
    /// answer within 30 s (the message carries its log).
    pub fn start() -> io::Result<RedisServer> {
        let binary = find_binary()?;
        let dir = crate::scratch_dir("palisade-redis");
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            binary,
            child: None,
            dir,
            port: crate::free_port()?,
        };
        // On an error the drop removes the directory.
        server.spawn()?;
        Ok(server)
    }

    /// The URL clients connect to: `redis://127.0.0.1:PORT/0`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The loopback port the server listens on (the same across restarts).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the server's log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server process is running (started and neither stopped
    /// nor killed, and it has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server's log, for assertion messages; empty when it wrote
    /// nothing, a line saying why when it cannot be read. (A server that
    /// cannot use its directory or log exits at once and says so on its
    /// standard error, which the start-up error shows.)
    #[must_use]
    pub fn log(&self) -> String {
        let path = self.dir.join("redis.log");
        match std::fs::read(&path) {
            Ok(log) => String::from_utf8_lossy(&log).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.dir.exists() => {
                format!("(no log: the directory {} is gone)", self.dir.display())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("(the log {} cannot be read: {e})", path.display()),
        }
    }

    /// Stops the server gracefully (`SHUTDOWN NOSAVE`: clients see their
    /// connections closed) and waits for the process to exit, killing it
    /// after 5 s. Nothing is kept: a [`restart`](Self::restart) starts
    /// empty. Stopping a stopped server does nothing.
    ///
    /// # Errors
    ///
    /// Waiting for or killing the process failed.
    pub fn stop(&mut self) -> io::Result<()> {
        // A paused server must run to shut down.
        let _ = self.resume();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // The server closes the connection without an answer when it
        // shuts down; any outcome is followed by waiting for the exit.
        let _ = command(self.port, &["SHUTDOWN", "NOSAVE"]);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills the server (`SIGKILL`), as a crash would, and waits for the
    /// process to exit. Killing a stopped server does nothing.
    ///
    /// # Errors
    ///
    /// Killing or waiting for the process failed.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // An already exited process makes `kill` fail; `wait` reaps it.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Freezes the server (`SIGSTOP`): connections stay open but nothing
    /// answers, as with a hung Redis. [`resume`](Self::resume) thaws it.
    ///
    /// # Errors
    ///
    /// The server is not running, or `kill -STOP` failed.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// Thaws a server frozen by [`pause`](Self::pause) (`SIGCONT`).
    ///
    /// # Errors
    ///
    /// The server is not running, or `kill -CONT` failed.
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal("CONT")
    }

    fn signal(&mut self, signal: &str) -> io::Result<()> {
        let Some(child) = self.child.as_ref() else {
            return Err(io::Error::other("redis-server is not running"));
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{signal} failed ({status})")))
        }
    }

    /// Starts the server again on the same port and directory, with an
    /// empty data set, and waits until it answers `PING`. A running server
    /// is stopped first.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start); also when another process took the
    /// port meanwhile.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = self.dir.join("redis.log");
        let port = self.port.to_string();
        let child = Command::new(&self.binary)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--databases", "16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Empty while the log can be written; read if the server exits
            // at start (it says there that it cannot use its directory or log).
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if command(self.port, &["PING"]).is_ok_and(|reply| reply.starts_with(b"+PONG")) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited ({status}) before answering PING on port {}:\n{}{}",
                    self.port,
                    self.log(),
                    stderr.trim_end()
                )));
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer PING on port {} within {} s:\n{}",
                        self.port,
                        START_TIMEOUT.as_secs(),
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` at Debian's path, or the first on the `PATH`.
fn find_binary() -> io::Result<PathBuf> {
    find_binary_in(Path::new(REDIS_SERVER), std::env::var_os("PATH").as_deref())
}

fn find_binary_in(debian: &Path, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if debian.is_file() {
        return Ok(debian.to_owned());
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "redis-server not found: install it with `sudo apt-get install redis-server`",
            )
        })
}

/// Sends one command to the server on `port` and returns the first bytes
/// of its reply (empty when it closed the connection without one).
fn command(port: u16, args: &[&str]) -> io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply)?;
    Ok(reply[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(server: &RedisServer) -> bool {
        command(server.port(), &["PING"]).is_ok_and(|r| r.starts_with(b"+PONG"))
    }

    #[test]
    fn a_started_server_answers_ping_on_its_url_and_is_removed_on_drop() {
        let server = RedisServer::start().unwrap();
        let url = server.url();
        assert_eq!(url, format!("redis://127.0.0.1:{}/0", server.port()));
        assert!(ping(&server));
        let dir = server.dir().to_owned();
        assert!(dir.is_dir());
        let port = server.port();
        drop(server);
        assert!(!dir.exists());
        assert!(command(port, &["PING"]).is_err(), "still listening after drop");
    }

    #[test]
    fn a_restart_without_its_directory_says_so_with_the_servers_own_words() {
        let mut server = RedisServer::start().unwrap();
        server.stop().unwrap();
        std::fs::remove_dir_all(server.dir()).unwrap();
        let err = server.restart().unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains("is gone"), "{err}");
        assert!(err.contains("FATAL CONFIG FILE ERROR"), "{err}");
        assert!(!server.is_running());
    }

    #[test]
    fn kill_and_stop_are_outages_and_restart_recovers_on_the_same_port_empty() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        assert_eq!(command(port, &["SET", "k", "v"]).unwrap(), b"+OK\r\n");
        server.kill().unwrap();
        assert!(!server.is_running());
        assert!(!ping(&server));
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert!(server.is_running());
        assert!(ping(&server));
        // No persistence: the key did not survive.
        assert_eq!(command(port, &["GET", "k"]).unwrap(), b"$-1\r\n");
        server.stop().unwrap();
        assert!(!ping(&server));
        server.stop().unwrap();
        server.restart().unwrap();
        assert!(ping(&server), "{}", server.log());
        server.pause().unwrap();
        let started = Instant::now();
        assert!(!ping(&server), "a paused server answered");
        assert!(started.elapsed() >= Duration::from_millis(900));
        server.resume().unwrap();
        assert!(ping(&server));
    }

    #[test]
    fn a_missing_server_binary_says_how_to_install_it() {
        let err = find_binary_in(
            Path::new("/nonexistent/redis-server"),
            Some(OsStr::new("/nonexistent/bin")),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "redis-server not found: install it with `sudo apt-get install redis-server`"
        );
        let dir = crate::scratch_dir("palisade-redis-path");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("redis-server"), b"").unwrap();
        let found = find_binary_in(Path::new("/nonexistent/redis-server"), Some(dir.as_os_str()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), dir.join("redis-server"));
    }
}
