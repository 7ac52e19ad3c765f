//! A session's files in (feature `files`, protocol §10.2): the bounds announced in HELLO
//! checked before anything runs, then each FILE_IN header and its FILE_IN_DATA checked
//! and queued for the bootstrap on the script's stdin path, within the STDIN window.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use super::state::FilesIn;
use super::Session;
use crate::bootstrap::{file_record, FilesRequest};
use crate::config::Config;
use crate::protocol::files::{
    check_announced, FileHeader, FileSet, FilesError, FilesHello, FilesLimits, FEATURE,
    MAX_PATH_LEN,
};
use crate::protocol::{ErrorCode, Hello};
use crate::sandbox::script_name;

/// The `files` bounds of this server, as WELCOME announces them.
pub(super) fn limits(cfg: &Config) -> FilesLimits {
    FilesLimits {
        files_in_bytes: cfg.max_files_size,
        files_in_count: cfg.max_files,
        file_path_len: MAX_PATH_LEN as u32,
        files_out_bytes: cfg.max_get_size,
        files_out_count: cfg.max_files,
    }
}

/// Whether HELLO asked for the feature (and this server has it: `FEATURES`).
pub(super) fn asked(hello: &Hello) -> bool {
    super::hello::FEATURES.contains(&FEATURE) && hello.features.iter().any(|f| f == FEATURE)
}

/// HELLO's announcement against the bounds: over a bound is `too_large`, a bad pattern
/// a protocol error, both before WELCOME and before anything runs.
pub(super) fn check_hello(hello: &Hello, cfg: &Config) -> Result<(), (ErrorCode, String)> {
    let Some(files) = hello.files.as_ref().filter(|_| asked(hello)) else {
        return Ok(());
    };
    check_announced(files, &limits(cfg)).map_err(|e| {
        let code = match e {
            FilesError::Pattern { .. } => ErrorCode::Protocol,
            _ => ErrorCode::TooLarge,
        };
        (code, e.to_string())
    })
}

/// The state of the files in, from HELLO.
pub(super) fn start(hello: &Hello) -> FilesIn {
    if !asked(hello) {
        return FilesIn::NotGranted;
    }
    match hello.files.as_ref() {
        Some(FilesHello { count, bytes, .. }) if *count > 0 => FilesIn::Arriving {
            // The announcement is the bound from here on: no more files or bytes.
            set: FileSet::new(*count, *bytes),
            left: *count,
            current: 0,
        },
        _ => FilesIn::Complete,
    }
}

/// How long after the session's time limit the bootstrap still keeps /tmp for fetches:
/// past the files' grace and the kill's own time, so that only a daemon gone for good
/// leaves it to its own bound.
const KEEP_AFTER_LIMIT: Duration = Duration::from_secs(30);

/// What the bootstrap is told of files (see `bootstrap::request`); `limit` is the
/// session's time limit.
pub(super) fn request(hello: &Hello, cfg: &Config, limit: Duration) -> FilesRequest {
    match hello.files.as_ref().filter(|_| asked(hello)) {
        Some(files) => FilesRequest {
            count: files.count,
            get: files.get.clone(),
            get_cap: cfg.max_get_size,
            get_count: cfg.max_files,
            keep_s: u32::try_from((limit + KEEP_AFTER_LIMIT).as_secs()).unwrap_or(u32::MAX),
        },
        None => FilesRequest::default(),
    }
}

impl Session {
    pub(super) fn on_file_in(&mut self, header: FileHeader, ctx: &mut Context<Self>) {
        if let Err(why) = self.take_file_in(&header) {
            return self.fail(ErrorCode::Protocol, why, ctx);
        }
        self.stdin
            .push_uncounted(&file_record(&header.name, header.size));
    }

    fn take_file_in(&mut self, header: &FileHeader) -> Result<(), String> {
        if !self.upload.complete() && !matches!(self.files, FilesIn::NotGranted) {
            return Err("FILE_IN before the whole script".into());
        }
        let script = script_name(self.hello.as_ref().and_then(|h| h.name.as_deref()));
        match &mut self.files {
            // As any frame type the session does not know (protocol §10.1).
            FilesIn::NotGranted => {
                Err("unknown frame type 0x07 (feature files not granted)".into())
            }
            FilesIn::Complete => Err("more FILE_IN frames than HELLO announced".into()),
            FilesIn::Arriving { current, .. } if *current > 0 => Err(format!(
                "FILE_IN while {current} bytes of the previous file are due"
            )),
            FilesIn::Arriving { set, left, current } => {
                // The script is in the same directory: a file must not replace it.
                if header.name == script || header.name.starts_with(&format!("{script}/")) {
                    return Err(format!("file '{}' has the script's name", header.name));
                }
                set.add(header).map_err(|e| match e {
                    FilesError::TooMany { .. } | FilesError::TooLarge { .. } => {
                        format!("{e} (more than HELLO announced)")
                    }
                    e => e.to_string(),
                })?;
                *left -= 1;
                *current = header.size;
                if *left == 0 && header.size == 0 {
                    self.files = FilesIn::Complete;
                }
                Ok(())
            }
        }
    }

    pub(super) fn on_file_in_data(&mut self, data: Bytes, ctx: &mut Context<Self>) {
        let n = data.len() as u64;
        let why = match &mut self.files {
            FilesIn::NotGranted => {
                Some("unknown frame type 0x08 (feature files not granted)".to_string())
            }
            FilesIn::Arriving { current, left, .. } if *current >= n => {
                *current -= n;
                if *current == 0 && *left == 0 {
                    self.files = FilesIn::Complete;
                }
                None
            }
            _ => Some("more FILE_IN_DATA bytes than the file's size".to_string()),
        };
        if let Some(why) = why {
            return self.fail(ErrorCode::Protocol, why, ctx);
        }
        // File content shares the STDIN window: the same bound on what the daemon holds.
        self.push_stdin(data, ctx);
    }
}
