use mozen_store::{StoreError, StoreOptions, open};

#[test]
fn wrong_format_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &StoreOptions::default()).unwrap());
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("raft_meta")
            .unwrap()
            .insert("format_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    match open(dir.path(), &StoreOptions::default()) {
        Err(e @ StoreError::Version { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("format version 99") && msg.contains("reads version 1"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a version error, got {e}"),
        Ok(_) => panic!("expected a version error, got a store"),
    }
}

#[test]
fn garbage_log_entry_names_tree_and_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &StoreOptions::default()).unwrap());
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("raft_log")
            .unwrap()
            .insert(42u64.to_be_bytes(), &b"\xff\xff\xff garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    match open(dir.path(), &StoreOptions::default()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("raft_log") && msg.contains("42"), "{msg}");
        }
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok(_) => panic!("expected a corruption error, got a store"),
    }
}

#[test]
fn damaged_snapshot_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &StoreOptions::default()).unwrap());
    std::fs::write(
        dir.path().join("snapshots/00000000000000000010.snap"),
        b"MOZSNAP\0xx",
    )
    .unwrap();
    match open(dir.path(), &StoreOptions::default()) {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("snapshots"), "{e}"),
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok(_) => panic!("expected a corruption error"),
    }
}
