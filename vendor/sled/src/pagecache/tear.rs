//! Mozen addition (see vendor/README.md): reports where log recovery stops short.
//!
//! Recovery reads the log until a message fails a check and takes that spot for the end of
//! the log (or, in its last pass, for the end of that segment). The unwritten space after the
//! real end of the log fails the same checks, so the decisions here only tell the two apart
//! and report; they change nothing recovery does.
//!
//! What the end of the written log looks like on disk:
//! - blank bytes (kind byte 0): sled's fill byte, a zeroed range, or past the end of the file;
//! - bytes left from an earlier use of a reused segment: intact messages of another segment
//!   number, or the middle of one, which reads as garbage until the next old message starts.
//!
//! So a stop is a tear when garbage is followed by nothing intact in its segment, or when
//! anything at all is followed by intact messages of the segment's own number. Messages of a
//! segment number are unique to one use of the file space, so the latter cannot be leftovers.
//! Garbage followed by leftovers reads as the end of the log, even when it is damage to the
//! last messages written into a reused segment.
//!
//! Tears of whole segments: a header that fails its checksum without being blank (recovery
//! leaves the segment out), a gap in the recent segments (recovery ends the log before it),
//! a segment that cannot be read, and an atomic batch reaching past the end of the log
//! (recovery drops the batch).

use std::fmt;

use super::{
    pread_exact_or_eof, read_segment_header, BasedBuf, LogOffset, Lsn,
    MessageHeader, MessageKind, SegmentNumber, MAX_MSG_HEADER_LEN,
    SEG_HEADER_LEN,
};
use crate::*;

/// Whether `byte` names a kind of message sled writes (0 is its blank fill byte).
fn is_message_kind(byte: u8) -> bool {
    byte != 0 && byte <= MessageKind::BlobLink.into()
}

/// Where sled's log recovery stopped short of the written log when a `Db` was opened, and
/// dropped what followed. See `Db::recovery_tear`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryTear {
    /// Byte offset in the `db` file of the message or segment header that failed.
    pub offset: u64,
    /// The log sequence number recovery expected there; -1 for a damaged segment header,
    /// whose number cannot be read.
    pub lsn: i64,
    /// Which check failed, what was found, and what sled did about it.
    pub reason: String,
    /// Whether intact messages (valid header and CRC, of the segment they lie in) follow the
    /// tear in the log, or follow another tear found in the same recovery. Garbage with
    /// valid messages after it is damage inside the written log; with nothing valid after,
    /// it is consistent with a write torn by a crash. But sled writes a few I/O buffers at
    /// once, so a crash can also leave a hole (a buffer not yet written) before intact
    /// messages among its last writes: seen in 2 of 60 SIGKILLs of a writer. Only what is
    /// known to have been flushed tells damage from such a hole.
    pub valid_after: bool,
}

impl fmt::Display for RecoveryTear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lsn = if self.lsn < 0 {
            "lsn unknown".to_string()
        } else {
            format!("lsn {}", self.lsn)
        };
        let after = if self.valid_after {
            "intact log messages follow it (damage inside the written log, or a \
             crash that left a hole among its last writes)"
        } else {
            "no intact log message follows it (as after a write torn by a crash)"
        };
        write!(
            f,
            "sled's log recovery stopped short at byte {} of the db file ({}): {}; {}",
            self.offset, lsn, self.reason, after
        )
    }
}

/// Records a tear found during recovery and logs it. The `Db` reports the tear with the
/// lowest lsn, the earliest loss; `valid_after` is true if it is for any tear, since
/// messages after a later tear also follow an earlier one.
pub(crate) fn note(config: &RunningConfig, tear: RecoveryTear) {
    let mut slot = config.recovery_tear.lock();
    if slot.as_ref().map_or(false, |old| old.offset == tear.offset) {
        return;
    }
    warn!("{}", tear);
    let valid_after =
        tear.valid_after || slot.as_ref().map_or(false, |old| old.valid_after);
    if slot.as_ref().map_or(true, |old| tear.lsn < old.lsn) {
        *slot = Some(tear);
    }
    if let Some(kept) = slot.as_mut() {
        kept.valid_after = valid_after;
    }
}

/// What lies where recovery expected a message.
enum Found {
    /// Kind byte 0: nothing was written here.
    Blank,
    /// An intact message of another segment number.
    OtherUse(SegmentNumber),
    /// An intact message of this segment.
    Intact,
    /// Not a message; says why.
    Garbage(String),
}

/// Inspects the message that would start at `at` in `seg`, a segment read from the file
/// (shorter than a segment when the file ends inside it), as `read_message` checks it.
fn inspect(
    seg: &[u8],
    at: usize,
    segment_size: usize,
    expected: SegmentNumber,
) -> Found {
    // as sled reads a header: a fixed buffer, zero past the end of the file
    let mut header_buf = [0_u8; 128];
    if at < seg.len() {
        let present = (seg.len() - at).min(header_buf.len());
        header_buf[..present].copy_from_slice(&seg[at..at + present]);
    }
    let kind = header_buf[4];
    if kind == 0 {
        return Found::Blank;
    }
    if !is_message_kind(kind) {
        return Found::Garbage(format!(
            "unknown message kind byte {:#04x}",
            kind
        ));
    }
    let mut cursor = &header_buf[..];
    let header = match MessageHeader::deserialize(&mut cursor) {
        Ok(header) => header,
        Err(e) => {
            return Found::Garbage(format!("unreadable message header: {}", e))
        }
    };
    let header_len = header_buf.len() - cursor.len();
    let room = (segment_size - at).saturating_sub(header_len);
    if header.len > room as u64 {
        return Found::Garbage(format!(
            "a {:?} message header claims {} bytes, the segment has room for {}",
            header.kind, header.len, room
        ));
    }
    let body_start = at + header_len;
    let body_end = body_start + header.len as usize;
    if body_end > seg.len() {
        return Found::Garbage(format!(
            "a {:?} message of {} bytes is cut by the end of the file after {}",
            header.kind,
            header.len,
            seg.len().saturating_sub(body_start)
        ));
    }
    let crc = calculate_message_crc32(
        &header_buf[..header_len],
        &seg[body_start..body_end],
    );
    if crc != header.crc32 {
        return Found::Garbage(format!(
            "CRC mismatch: a {:?} message header (length {}, segment {}) stores crc32 \
             {:#010x}, its bytes give {:#010x}",
            header.kind, header.len, header.segment_number.0, header.crc32, crc
        ));
    }
    if header.segment_number != expected {
        return Found::OtherUse(header.segment_number);
    }
    Found::Intact
}

/// The segment number of the first intact message starting after `at` in `seg`.
fn first_intact_after(
    seg: &[u8],
    at: usize,
    segment_size: usize,
    expected: SegmentNumber,
) -> Option<SegmentNumber> {
    let last = seg.len().min(segment_size - MAX_MSG_HEADER_LEN);
    let first = (at + 1).max(SEG_HEADER_LEN);
    (first..last).find_map(|pos| {
        // cheap filter first: most garbage has an impossible kind byte
        if !is_message_kind(*seg.get(pos + 4)?) {
            return None;
        }
        match inspect(seg, pos, segment_size, expected) {
            Found::Intact => Some(expected),
            Found::OtherUse(other) => Some(other),
            Found::Blank | Found::Garbage(_) => None,
        }
    })
}

/// Whether a segment newer than `after` (an lsn) has a valid header and an intact first
/// message.
fn later_segment_intact(config: &RunningConfig, after: Lsn) -> bool {
    let segment_size = config.segment_size;
    let file_len = match config.file.metadata() {
        Ok(metadata) => metadata.len(),
        Err(_) => return false,
    };
    let slots = (file_len + segment_size as u64 - 1) / segment_size as u64;
    (0..slots).any(|slot| {
        let base = slot * segment_size as u64;
        match read_segment_header(&config.file, base) {
            Ok(header)
                if header.ok
                    && header.lsn >= 0
                    && header.lsn > after
                    && header.lsn % segment_size as Lsn == 0 =>
            {
                let mut seg = vec![0; segment_size];
                let read = pread_exact_or_eof(&config.file, &mut seg, base)
                    .unwrap_or(0);
                seg.truncate(read);
                let number = SegmentNumber(
                    u64::try_from(header.lsn).unwrap() / segment_size as u64,
                );
                matches!(
                    inspect(&seg, SEG_HEADER_LEN, segment_size, number),
                    Found::Intact
                )
            }
            _ => false,
        }
    })
}

/// Called where a recovery pass's read of the message at `lid` (`lsn`) failed, in the
/// segment the pass holds; `error` is the read's error when it failed with one. Records a
/// tear unless the spot is the end of the written log. `skips_segment` says that sled goes
/// on with the next segment rather than ending the log here.
pub(crate) fn examine_stop(
    config: &RunningConfig,
    segment: &BasedBuf,
    lid: LogOffset,
    lsn: Lsn,
    expected: SegmentNumber,
    error: Option<&Error>,
    skips_segment: bool,
) {
    let segment_size = config.segment_size;
    let at = usize::try_from(lid - segment.offset).unwrap();
    let found = inspect(&segment.buf, at, segment_size, expected);
    let after = first_intact_after(&segment.buf, at, segment_size, expected);
    let damaged = match (&found, error) {
        (Found::Garbage(_), _) | (Found::Intact, Some(_)) => true,
        _ => false,
    };
    let valid_in_segment = after == Some(expected);
    if !valid_in_segment && !(damaged && after.is_none()) {
        // blank space or leftovers of an earlier use: the end of the written log
        return;
    }
    let what = match (found, error) {
        (Found::Garbage(why), _) => why,
        (Found::Intact, Some(e)) => {
            format!("the message reads back intact but using it failed: {}", e)
        }
        (Found::Intact, None) => {
            "an intact message sled did not use".to_string()
        }
        (Found::Blank, _) => "blank bytes (kind byte 0) where a message was \
                              expected"
            .to_string(),
        (Found::OtherUse(other), _) => format!(
            "an intact message of segment {} where segment {} was expected",
            other.0, expected.0
        ),
    };
    let then = if skips_segment {
        "sled skipped the rest of this segment"
    } else {
        "sled ended the log here"
    };
    let valid_after =
        valid_in_segment || later_segment_intact(config, config.normalize(lsn));
    note(
        config,
        RecoveryTear {
            offset: lid,
            lsn,
            reason: format!("{}; {}", what, then),
            valid_after,
        },
    );
}

/// Called where a recovery pass could not load its next segment for a reason other than
/// having read them all or reaching its configured end.
pub(crate) fn examine_segment_stop(
    config: &RunningConfig,
    offset: LogOffset,
    lsn: Lsn,
    error: &Error,
) {
    note(
        config,
        RecoveryTear {
            offset,
            lsn,
            reason: format!(
                "the segment there could not be read ({}); sled ended the log \
                 before it",
                error
            ),
            valid_after: later_segment_intact(config, lsn),
        },
    );
}

/// Called for a segment whose header fails its checksum, which recovery leaves out of the
/// log without a word. All-blank headers are free or zeroed segments.
pub(crate) fn examine_segment_header(config: &RunningConfig, base: LogOffset) {
    let mut header = [0; SEG_HEADER_LEN];
    let _ = pread_exact_or_eof(&config.file, &mut header, base);
    if header.iter().all(|b| *b == 0) {
        return;
    }
    let mut seg = vec![0; config.segment_size];
    let read = pread_exact_or_eof(&config.file, &mut seg, base).unwrap_or(0);
    seg.truncate(read);
    // the segment number is unknown: any intact message in it counts
    let valid_after = (SEG_HEADER_LEN
        ..seg.len().min(config.segment_size - MAX_MSG_HEADER_LEN))
        .any(|pos| {
            if !seg.get(pos + 4).map_or(false, |kind| is_message_kind(*kind)) {
                return false;
            }
            let number = match MessageHeader::deserialize(&mut &seg[pos..]) {
                Ok(header) => header.segment_number,
                Err(_) => return false,
            };
            matches!(
                inspect(&seg, pos, config.segment_size, number),
                Found::Intact
            )
        });
    note(
        config,
        RecoveryTear {
            offset: base,
            lsn: -1,
            reason: format!(
                "the segment header fails its checksum (found bytes {:02x?}); \
                 sled left the whole segment out of the log",
                header
            ),
            valid_after,
        },
    );
}

/// Called when recovery finds no segment for `missing` in the recent part of the log while
/// a later segment exists: recovery ends the log before the gap.
pub(crate) fn note_gap(
    config: &RunningConfig,
    missing: Lsn,
    next: Option<(Lsn, LogOffset)>,
) {
    let (next_lsn, next_offset) = match next {
        Some(next) => next,
        None => return,
    };
    note(
        config,
        RecoveryTear {
            offset: next_offset,
            lsn: missing,
            reason: format!(
                "no segment holds lsn {}, yet the segment at this offset holds \
                 lsn {}; sled ended the log at the gap and dropped the segments \
                 after it",
                missing, next_lsn
            ),
            valid_after: later_segment_intact(config, missing - 1),
        },
    );
}

/// Called where a recovery pass finds an atomic batch that reaches past the end of the log
/// it can trust: sled drops the whole batch and ends the log before it.
pub(crate) fn note_torn_batch(
    config: &RunningConfig,
    lid: LogOffset,
    lsn: Lsn,
    batch_end: Lsn,
    log_end: Lsn,
) {
    note(
        config,
        RecoveryTear {
            offset: lid,
            lsn,
            reason: format!(
                "an atomic batch starting here needs the log up to lsn {}, \
                 which ends at lsn {}; sled dropped the batch and ended the log \
                 before it",
                batch_end, log_end
            ),
            valid_after: false,
        },
    );
}
