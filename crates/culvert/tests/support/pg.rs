pub use culvert_testkit::pg::*;
