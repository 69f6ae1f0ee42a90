use mozen_store::{LogStore, StateMachineStore, StoreOptions, TypeConfig, open};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path(), &StoreOptions::default()).expect("open store");
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite on the sled store.
#[test]
fn openraft_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
