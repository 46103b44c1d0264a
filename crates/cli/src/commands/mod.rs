pub mod bench;
pub mod compare;
pub mod datasets;
pub mod engine;
pub mod grade;
pub mod run;
pub mod sandbox;
pub mod table2;
