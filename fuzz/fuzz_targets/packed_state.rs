//! A packed user state from any bytes: never a panic (a damaged form is an error); whatever
//! reads back packs again into bytes that read back to an equal state.
#![no_main]

use herald::domain::packed_state::{pack, unpack, PackedState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = unpack(&PackedState::from_bytes(data)) else {
        return;
    };
    let packed = pack(&state).expect("a state that read back packs again");
    let again = unpack(&packed).expect("what pack wrote reads back");
    assert_eq!(again, state);
    // Packing is a function of the state: the same state, the same bytes.
    assert_eq!(pack(&again).expect("packs").as_bytes(), packed.as_bytes());
});
