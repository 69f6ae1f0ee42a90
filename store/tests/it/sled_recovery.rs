//! The vendored sled reports where its log recovery stops short of the written log
//! (`Db::recovery_tear`, vendor/README.md), so damage in a `db` file is not taken for the
//! end of the log.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Keys written by `written_dir`, flushed in groups of `FLUSH_EVERY`: about 1.4 MB of log,
/// three of sled's segments.
const KEYS: u32 = 3000;
const FLUSH_EVERY: u32 = 10;
/// sled's default segment size, which the store keeps.
const SEGMENT: u64 = 512 * 1024;
/// Size of the damage laid over the log.
const DAMAGE: usize = 4096;
/// How far before the damage the message it hits can start: these tests write messages of
/// at most a leaf node (17 entries of `value`, about 2 KiB) and its header.
const LONGEST_MESSAGE: u64 = 4096;

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value {i:06} ").repeat(8).into_bytes()
}

/// A value unlike any `value`, to be found in the file.
fn marked_value() -> Vec<u8> {
    b"a marked value ".repeat(60).to_vec()
}

/// Opens the sled Db in `dir`, waiting up to 3 s for the file lock that a dropped Db
/// releases from a background thread.
fn open(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if mozen_store::storage::lock_busy(&e) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// A fresh sled dir holding `KEYS` keys and then key `KEYS` with the marked value, all
/// flushed; the Db is closed. Recovery has not run on it yet: the next open replays the
/// whole log.
fn written_dir() -> anyhow::Result<TempDir> {
    let dir = TempDir::new()?;
    let db = open(dir.path())?;
    for i in 0..KEYS {
        db.insert(key(i), value(i))?;
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            db.flush()?;
        }
    }
    db.insert(key(KEYS), marked_value())?;
    db.flush()?;
    drop(db);
    Ok(dir)
}

fn db_file(dir: &TempDir) -> PathBuf {
    dir.path().join("db")
}

/// Offset of the last copy of the marked value in the db file.
fn last_marked(path: &Path) -> anyhow::Result<u64> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let needle = marked_value();
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == &needle[..])
        .ok_or_else(|| anyhow::anyhow!("the marked value is not in {}", path.display()))?;
    Ok(at as u64)
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Deterministic noise, so that a failure replays.
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    blake3::Hasher::new()
        .update(b"sled_recovery damage")
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// The keys among `0..KEYS` whose value is not the one written.
fn lost_keys(db: &sled::Db) -> anyhow::Result<usize> {
    let mut lost = 0;
    for i in 0..KEYS {
        if db.get(key(i))?.as_deref() != Some(&value(i)[..]) {
            lost += 1;
        }
    }
    Ok(lost)
}

#[test]
fn clean_log_reports_no_tear() -> anyhow::Result<()> {
    let dir = written_dir()?;
    let db = open(dir.path())?;
    assert_eq!(db.recovery_tear(), None);
    assert_eq!(lost_keys(&db)?, 0);
    assert_eq!(db.get(key(KEYS))?.as_deref(), Some(&marked_value()[..]));
    Ok(())
}

#[test]
fn tail_cut_inside_last_message_is_a_tear_with_nothing_after() -> anyhow::Result<()> {
    let dir = written_dir()?;
    let path = db_file(&dir);
    let marked = last_marked(&path)?;
    let cut = marked + marked_value().len() as u64 / 2;
    OpenOptions::new().write(true).open(&path)?.set_len(cut)?;

    let db = open(dir.path())?;
    let tear = db.recovery_tear().expect("the cut is reported");
    assert!(!tear.valid_after, "{tear}");
    assert!(
        tear.offset < marked && marked - tear.offset < LONGEST_MESSAGE,
        "the tear is the message holding the marked value, at {marked}: {tear}"
    );
    assert!(tear.reason.contains("cut by the end of the file"), "{tear}");
    assert_eq!(db.get(key(KEYS))?, None, "sled still drops the cut message");
    assert_eq!(lost_keys(&db)?, 0, "the messages before the cut are kept");
    Ok(())
}

#[test]
fn garbage_in_the_middle_is_a_tear_with_intact_messages_after() -> anyhow::Result<()> {
    let dir = written_dir()?;
    let path = db_file(&dir);
    let start = std::fs::metadata(&path)?.len() / 2;
    let end = start + DAMAGE as u64;
    overwrite(&path, start, &noise(DAMAGE))?;

    let db = open(dir.path())?;
    let tear = db.recovery_tear().expect("the damage is reported");
    assert!(tear.valid_after, "{tear}");
    assert!(
        tear.offset < end && start - tear.offset.min(start) < LONGEST_MESSAGE,
        "the tear is a message the damage at {start}..{end} hits: {tear}"
    );
    assert!(tear.lsn >= 0, "{tear}");
    let lost = lost_keys(&db)?;
    assert!(lost > 0, "sled still ends the log at the damage");
    drop(db);

    // Opening cut the log at the tear for good: the next open finds a clean, shorter log.
    let db = open(dir.path())?;
    assert_eq!(db.recovery_tear(), None);
    assert_eq!(lost_keys(&db)?, lost);
    Ok(())
}

#[test]
fn damaged_segment_header_is_a_tear() -> anyhow::Result<()> {
    let dir = written_dir()?;
    overwrite(&db_file(&dir), SEGMENT, &noise(64))?;

    let db = open(dir.path())?;
    let tear = db.recovery_tear().expect("the damage is reported");
    assert_eq!((tear.offset, tear.lsn), (SEGMENT, -1), "{tear}");
    assert!(tear.valid_after, "{tear}");
    assert!(tear.reason.contains("segment header"), "{tear}");
    Ok(())
}

#[test]
fn cut_inside_an_atomic_batch_reports_the_batch() -> anyhow::Result<()> {
    let dir = written_dir()?;
    let db = open(dir.path())?;
    let mut batch = sled::Batch::default();
    for i in 0..200 {
        batch.insert(&key(KEYS + 1 + i), marked_value());
    }
    db.apply_batch(batch)?;
    db.flush()?;
    drop(db);
    let path = db_file(&dir);
    let cut = last_marked(&path)? - 100 * marked_value().len() as u64;
    OpenOptions::new().write(true).open(&path)?.set_len(cut)?;

    let db = open(dir.path())?;
    let tear = db.recovery_tear().expect("the cut is reported");
    assert!(tear.reason.contains("atomic batch"), "{tear}");
    assert!(!tear.valid_after, "{tear}");
    assert_eq!(
        db.get(key(KEYS + 1))?,
        None,
        "sled still drops the whole batch"
    );
    assert_eq!(lost_keys(&db)?, 0);
    Ok(())
}

/// A reused segment holds the bytes of its earlier use after the end of the log, which fail
/// the same checks as damage: reopening after a clean close must not report them.
#[test]
fn reopening_over_reused_segments_reports_no_tear() -> anyhow::Result<()> {
    const ROUNDS: u32 = 6;
    const LIVE_KEYS: u32 = 300;
    let dir = TempDir::new()?;
    let mut written = 0;
    for round in 0..ROUNDS {
        let db = open(dir.path())?;
        assert_eq!(db.recovery_tear(), None, "round {round}");
        for j in 0..4000u32 {
            let v = format!("{round}-{j}-").repeat(60).into_bytes();
            written += v.len();
            db.insert(key(j % LIVE_KEYS), v)?;
            if j % 5 == 0 {
                db.flush()?;
            }
        }
        db.flush()?;
    }
    let db = open(dir.path())?;
    assert_eq!(db.recovery_tear(), None);
    let last = ROUNDS - 1;
    for i in 0..LIVE_KEYS {
        let j = 4000 - LIVE_KEYS + i;
        let v = format!("{last}-{j}-").repeat(60).into_bytes();
        assert_eq!(
            db.get(key(j % LIVE_KEYS))?.as_deref(),
            Some(&v[..]),
            "key {i}"
        );
    }
    let file_len = std::fs::metadata(db_file(&dir))?.len() as usize;
    assert!(
        file_len * 3 < written,
        "segments were reused: {written} bytes written into a {file_len}-byte file"
    );
    Ok(())
}

/// sled's snapshot file (`snap.*`) has a checksum of its own: damage there fails the open
/// rather than being replaced by a replay of the log.
#[test]
fn damaged_snapshot_file_fails_the_open() -> anyhow::Result<()> {
    let dir = written_dir()?;
    drop(open(dir.path())?);
    let snap = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .ok_or_else(|| anyhow::anyhow!("no snap.* file after a recovery"))?;
    overwrite(&snap, 10, &noise(16))?;

    match open(dir.path()) {
        Err(sled::Error::Corruption { .. }) => Ok(()),
        other => anyhow::bail!("expected a corruption error, got {other:?}"),
    }
}
