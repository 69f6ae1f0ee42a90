//! Input files of a job: read once, hashed, indexed by line, and cut into slices.

use super::slice::SliceArgs;
use serde_json::Value;
use std::path::PathBuf;

/// One input file with its line index.
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// blake3 of the whole file.
    pub hash: String,
    /// Byte offset where each line starts, then the file length: line `i` is
    /// `starts[i]..starts[i + 1]`.
    starts: Vec<u64>,
}

impl InputFile {
    /// Reads and indexes `path`; with `need_text` the file must be UTF-8.
    pub fn read(path: PathBuf, need_text: bool) -> Result<InputFile, String> {
        let bytes =
            std::fs::read(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        if need_text && let Err(e) = std::str::from_utf8(&bytes) {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(format!(
                "{}: line {line} is not UTF-8 text (byte {at}); ship = true sends text, use ship = false to let agents read the file",
                path.display()
            ));
        }
        let mut starts = vec![0u64];
        starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i as u64 + 1),
        );
        if *starts.last().unwrap_or(&0) != bytes.len() as u64 {
            starts.push(bytes.len() as u64);
        }
        Ok(InputFile {
            hash: blake3::hash(&bytes).to_hex().to_string(),
            path,
            bytes,
            starts,
        })
    }

    pub fn lines(&self) -> u64 {
        self.starts.len() as u64 - 1
    }

    fn byte_range(&self, lines: [u64; 2]) -> (usize, usize) {
        (
            self.starts[lines[0] as usize] as usize,
            self.starts[lines[1] as usize] as usize,
        )
    }

    /// The map argument of lines `[start, end)`.
    pub fn slice(&self, lines: [u64; 2], ship: bool, params: &Value) -> SliceArgs {
        let (a, b) = self.byte_range(lines);
        let chunk = &self.bytes[a..b];
        SliceArgs {
            file: self.path.display().to_string(),
            lines,
            file_hash: self.hash.clone(),
            text: ship.then(|| String::from_utf8_lossy(chunk).into_owned()),
            blob: None,
            bytes: (!ship).then_some([a as u64, b as u64]),
            slice_hash: (!ship).then(|| blake3::hash(chunk).to_hex().to_string()),
            params: params.clone(),
        }
    }

    /// The text of lines `[start, end)` (lossy where the file is not UTF-8; a job that ships
    /// its data refused such files when it read them).
    pub fn text(&self, lines: [u64; 2]) -> std::borrow::Cow<'_, str> {
        let (a, b) = self.byte_range(lines);
        String::from_utf8_lossy(&self.bytes[a..b])
    }

    pub fn slice_bytes(&self, lines: [u64; 2]) -> u64 {
        let (a, b) = self.byte_range(lines);
        (b - a) as u64
    }
}

/// A slice before its arguments are built: which file, which lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRef {
    pub file: usize,
    pub lines: [u64; 2],
}

/// Cuts every file into slices of at most `per_slice` lines (an empty file gives none).
pub fn cut(files: &[InputFile], per_slice: u64) -> Vec<SliceRef> {
    let per = per_slice.max(1);
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let mut start = 0;
        while start < f.lines() {
            let end = (start + per).min(f.lines());
            out.push(SliceRef {
                file: i,
                lines: [start, end],
            });
            start = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_on_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "l1\nl2\nl3\nl4\nl5").unwrap();
        let b = dir.path().join("b");
        std::fs::write(&b, "").unwrap();
        let files = vec![
            InputFile::read(a, true).unwrap(),
            InputFile::read(b, true).unwrap(),
        ];
        assert_eq!(files[0].lines(), 5);
        assert_eq!(files[1].lines(), 0);
        let s = cut(&files, 2);
        assert_eq!(
            s.iter().map(|s| s.lines).collect::<Vec<_>>(),
            vec![[0, 2], [2, 4], [4, 5]]
        );
        let last = files[0].slice(s[2].lines, true, &Value::Null);
        assert_eq!(last.text.as_deref(), Some("l5"));
        let mid = files[0].slice(s[1].lines, false, &Value::Null);
        assert_eq!((mid.bytes, mid.text.as_deref()), (Some([6, 12]), None));
        assert_eq!(mid.label(), format!("{}:3-4", files[0].path.display()));
    }

    #[test]
    fn non_utf8_is_refused_only_when_text_is_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"ok\nok\n\xff\n").unwrap();
        let e = InputFile::read(a.clone(), true).err().unwrap();
        assert!(e.contains("line 3 is not UTF-8"), "{e}");
        assert_eq!(InputFile::read(a, false).unwrap().lines(), 3);
    }
}
