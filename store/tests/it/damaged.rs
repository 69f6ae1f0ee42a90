//! Damaged data dirs fail with a typed error naming what is damaged, never with a panic.

use crate::common::*;
use mozen_store::{Command, StoreError, open};
use openraft::RaftSnapshotBuilder;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use std::path::Path;
use tempfile::TempDir;

/// A data dir holding log entries 0..=4, appended one at a time so that each is a chunk of
/// its own under its own index.
fn dir_with_log() -> anyhow::Result<TempDir> {
    let dir = TempDir::new()?;
    runtime().block_on(async {
        let (mut log, _sm) = open(dir.path(), &test_options())?;
        for i in 0..5 {
            log.blocking_append([entry(1, i, event(i))]).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(dir)
}

/// A log chunk holding one entry, as the store writes it.
fn one_entry_chunk(e: &mozen_store::Entry) -> anyhow::Result<Vec<u8>> {
    let bytes = postcard::to_allocvec(e)?;
    let mut chunk = 1u32.to_le_bytes().to_vec();
    chunk.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&bytes);
    Ok(chunk)
}

/// Opens the store's sled Db directly, waiting for the lock a dropped store releases late.
fn raw_db(dir: &Path) -> anyhow::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::open(dir.join("db")) {
            Err(sled::Error::Io(e))
                if mozen_store::storage::lock_busy(&e) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

/// Writes `value` under `key` in `tree`, bypassing the store.
fn poke(dir: &Path, tree: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    let db = raw_db(dir)?;
    db.open_tree(tree)?.insert(key, value)?;
    db.flush()?;
    Ok(())
}

#[test]
fn wrong_format_version_is_a_version_error() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    poke(
        dir.path(),
        "raft_meta",
        b"format_version",
        &99u32.to_be_bytes(),
    )?;
    match open(dir.path(), &test_options()) {
        Err(StoreError::Version {
            found, expected, ..
        }) => {
            assert_eq!(found, "99");
            assert_eq!(expected, mozen_store::FORMAT_VERSION);
        }
        Err(e) => panic!("expected a version error, got {e}"),
        Ok(_) => panic!("expected a version error, the store opened"),
    }
    Ok(())
}

#[test]
fn missing_version_on_a_dir_with_data_is_a_version_error() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    {
        let db = raw_db(dir.path())?;
        db.open_tree("raft_meta")?.remove("format_version")?;
        db.flush()?;
    }
    match open(dir.path(), &test_options()) {
        Err(StoreError::Version { .. }) => {}
        Err(e) => panic!("expected a version error, got {e}"),
        Ok(_) => panic!("expected a version error, the store opened"),
    }
    Ok(())
}

#[test]
fn garbage_log_entry_in_the_middle_fails_open_naming_it() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    poke(dir.path(), "raft_log", &2u64.to_be_bytes(), b"garbage")?;
    let err = open(dir.path(), &test_options())
        .err()
        .expect("the whole log is checked at open");
    let msg = err.to_string();
    assert!(err.is_damage(), "{msg}");
    assert!(msg.contains("raft_log") && msg.contains("index 2"), "{msg}");
    Ok(())
}

#[test]
fn a_valid_entry_with_a_broken_seal_fails_open_naming_the_checksum() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    // A well-formed chunk, as the previous format wrote it, without the seal.
    let unsealed = one_entry_chunk(&entry(1, 3, event(3)))?;
    poke(dir.path(), "raft_log", &3u64.to_be_bytes(), &unsealed)?;
    let msg = open(dir.path(), &test_options())
        .err()
        .expect("open fails")
        .to_string();
    assert!(msg.contains("index 3") && msg.contains("checksum"), "{msg}");
    Ok(())
}

#[test]
fn garbage_last_log_entry_fails_open() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    poke(dir.path(), "raft_log", &4u64.to_be_bytes(), &[0xff; 40])?;
    match open(dir.path(), &test_options()) {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!(tree, "raft_log");
            assert_eq!(key, "index 4");
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the store opened"),
    }
    Ok(())
}

#[test]
fn entry_stored_under_the_wrong_index_is_corrupt() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    let wrong = one_entry_chunk(&entry(1, 9, event(9)))?;
    poke(dir.path(), "raft_log", &4u64.to_be_bytes(), &wrong)?;
    let err = open(dir.path(), &test_options()).err().expect("open fails");
    assert!(err.to_string().contains("index 4"), "{err}");
    Ok(())
}

#[test]
fn garbage_vote_fails_open_naming_it() -> anyhow::Result<()> {
    let dir = dir_with_log()?;
    poke(dir.path(), "raft_meta", b"vote", b"\xff\xff\xff")?;
    match open(dir.path(), &test_options()) {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!((tree, key.as_str()), ("raft_meta", "vote"));
        }
        other => panic!("expected corruption, got {:?}", other.err()),
    }
    Ok(())
}

#[test]
fn garbage_outcome_fails_open_naming_the_request() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    drop(open(dir.path(), &test_options())?);
    poke(dir.path(), "sm_outcomes", &key(3).0, b"\x05nope")?;
    match open(dir.path(), &test_options()) {
        Err(StoreError::Corrupt { tree, key: k, .. }) => {
            assert_eq!(tree, "sm_outcomes");
            assert_eq!(k, key(3).to_hex());
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the store opened"),
    }
    Ok(())
}

#[test]
fn damaged_snapshot_file_fails_open_naming_it() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let name = runtime()
        .block_on(async {
            let (_log, mut sm) = open(dir.path(), &test_options())?;
            let mut cmds = vec![Command::RegisterNode {
                node: node(1, 10),
                at: 1,
            }];
            cmds.extend(lifecycle(0, 5, 10, 2));
            sm.apply(entries(0, cmds)).await?;
            sm.build_snapshot().await?;
            anyhow::Ok(())
        })
        .and_then(|()| {
            let snaps: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            assert_eq!(snaps.len(), 1, "one snapshot file: {snaps:?}");
            Ok(snaps[0].clone())
        })?;
    let mut bytes = std::fs::read(&name)?;
    bytes[60] ^= 0x55; // inside the header
    std::fs::write(&name, bytes)?;
    match open(dir.path(), &test_options()) {
        Err(StoreError::Corrupt { tree, key, reason }) => {
            assert_eq!(tree, "snapshots");
            let file = name.file_name().expect("name").to_string_lossy();
            assert_eq!(key, file);
            assert!(reason.contains("hash"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.err()),
    }
    Ok(())
}

#[test]
fn truncated_snapshot_is_refused_at_install() -> anyhow::Result<()> {
    runtime().block_on(async {
        let a = TempDir::new()?;
        let b = TempDir::new()?;
        let (_la, mut sa) = open(a.path(), &test_options())?;
        let (_lb, mut sb) = open(b.path(), &test_options())?;
        let mut cmds = vec![Command::RegisterNode {
            node: node(1, 10),
            at: 1,
        }];
        cmds.extend(lifecycle(0, 5, 100, 2));
        sa.apply(entries(0, cmds)).await?;
        let snap = sa.build_snapshot().await?;
        let path = std::fs::read_dir(a.path().join("snapshots"))?
            .next()
            .expect("a snapshot")?
            .path();
        let bytes = std::fs::read(&path)?;
        let mut rx = sb.begin_receiving_snapshot().await?;
        {
            use tokio::io::AsyncWriteExt;
            rx.write_all(&bytes[..bytes.len() - 50]).await?;
            rx.shutdown().await?;
        }
        let err = sb
            .install_snapshot(&snap.meta, rx)
            .await
            .expect_err("a truncated snapshot is refused");
        assert!(err.to_string().contains("snapshots"), "{err}");
        // Nothing changed on the receiver.
        assert!(sb.last_snapshot().is_none());
        assert_eq!(sb.shared().read().expect("state").request_count(), 0);
        anyhow::Ok(())
    })
}

/// A crash in the middle of a write leaves a torn last message that was never acknowledged:
/// the store opens without it, says so, and keeps everything acknowledged.
#[test]
fn a_torn_tail_past_the_watermark_is_trimmed_and_reported() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let marker = "torn-tail-marker-".repeat(8);
    runtime().block_on(async {
        let (mut log, _sm) = open(dir.path(), &test_options())?;
        for i in 0..9 {
            log.blocking_append([entry(1, i, event(i))]).await?;
        }
        let last = Command::Event {
            kind: "t".into(),
            node: None,
            message: marker.clone(),
            at: 9,
        };
        log.blocking_append([entry(1, 9, last)]).await?;
        anyhow::Ok(())
    })?;
    // As if the crash came before entry 9's flush was done: the watermark says 8.
    let mut mark = mozen_store::mark::read(dir.path())?.expect("a watermark");
    mark.flushed = Some(log_id(1, 8));
    drop(mozen_store::mark::Watermark::create(
        dir.path(),
        mark,
        None,
    )?);
    // The torn write: the file ends inside entry 9's message.
    let db = dir.path().join("db").join("db");
    let bytes = std::fs::read(&db)?;
    let at = bytes
        .windows(marker.len())
        .rposition(|w| w == marker.as_bytes())
        .expect("entry 9 is in the file");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)?
        .set_len((at + marker.len() / 2) as u64)?;

    let (mut log, _sm) = open(dir.path(), &test_options())?;
    let tear = log
        .torn_tail()
        .expect("the torn tail is reported")
        .to_string();
    assert!(tear.contains("stopped short"), "{tear}");
    runtime().block_on(async {
        let state = log.get_log_state().await?;
        assert_eq!(state.last_log_id, Some(log_id(1, 8)), "entry 9 was trimmed");
        anyhow::Ok(())
    })
}
