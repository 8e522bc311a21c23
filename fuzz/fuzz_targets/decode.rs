//! Fuzzes the ledger decoder and segment scan with arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    redrain_ledger::check_decoder(data);
});
