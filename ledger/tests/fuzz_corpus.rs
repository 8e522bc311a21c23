//! Runs the fuzz corpus (`fuzz/corpus/decode`) through the fuzz target's check, and a few
//! thousand generated damaged segments: the suite runs the corpus, not the fuzzer.

use redrain_ledger::{
    check_decoder, encode_record, scan_segment, seal_payload, Header, PAGE_LEN, SEAL,
};

/// A small sealed segment of `n` records.
fn segment(n: u64) -> Vec<u8> {
    let mut b = Header {
        node: 1,
        segment: 0,
        first_seq: 10,
    }
    .encode()
    .to_vec();
    for i in 0..n {
        encode_record(
            10 + i,
            1 + (i % 3) as u8,
            format!("payload {i}").as_bytes(),
            &mut b,
        );
    }
    encode_record(9 + n, SEAL, &seal_payload(9 + n, n), &mut b);
    b
}

#[test]
fn the_corpus_passes_the_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        check_decoder(&bytes);
        files += 1;
    }
    assert!(files >= 4, "the corpus has its seeds ({files})");
    // The seeds were written by an independent encoder (Python, its own CRC-32C): the format
    // as documented reads back.
    let sealed = std::fs::read(dir.join("sealed-5")).unwrap();
    let scan = scan_segment(&sealed, |_| {}).unwrap();
    assert_eq!((scan.records, scan.sealed, scan.damage), (5, true, None));
    assert_eq!(sealed, segment_like_the_seed());
}

/// `sealed-5` as this crate encodes it.
fn segment_like_the_seed() -> Vec<u8> {
    let mut b = Header {
        node: 1,
        segment: 0,
        first_seq: 0,
    }
    .encode()
    .to_vec();
    for i in 0..5u64 {
        encode_record(i, 2, format!("{{\"win\": {i}}}").as_bytes(), &mut b);
    }
    encode_record(4, SEAL, &seal_payload(4, 5), &mut b);
    b
}

#[test]
fn damaged_segments_pass_the_check() {
    let whole = segment(6);
    for cut in 0..=whole.len() {
        check_decoder(&whole[..cut]);
    }
    for at in 0..whole.len() {
        for bit in 0..8 {
            let mut b = whole.clone();
            b[at] ^= 1 << bit;
            check_decoder(&b);
        }
    }
    // Runs of zeros as a power cut (or a medium) leaves them, across pages of a segment
    // several pages long: whole pages, and runs from every 97th offset to a page's end.
    let long = segment(600);
    assert!(long.len() > 4 * PAGE_LEN);
    for start in (0..long.len()).step_by(97) {
        for end in [start + PAGE_LEN, start + PAGE_LEN - start % PAGE_LEN] {
            let mut b = long.clone();
            b[start..end.min(long.len())].fill(0);
            check_decoder(&b);
        }
    }
}
