use super::*;
use crate::lexer::Thousands;
use crate::parser::parse;
use crate::ApproxPolicy;

fn eq_with(g: &str, p: &str, opts: &GradeOptions, rounded: bool) -> Option<MatchRule> {
    let g = parse(g, Thousands::Join).unwrap();
    let p = parse(p, Thousands::Join).unwrap();
    let mut cx = Cx {
        opts,
        fuel: Fuel(200_000),
        gold_decimals: if rounded {
            GoldDecimals::Rounded
        } else {
            GoldDecimals::RoundedTo
        },
        count_duplicates: false,
    };
    equal(&g, &p, &mut cx)
}
fn eq(g: &str, p: &str) -> bool {
    eq_with(g, p, &GradeOptions::default(), false).is_some()
}

#[test]
fn exact_numbers() {
    assert!(eq("\\frac{1}{2}", "0.5"));
    assert!(eq("10/9", "\\frac{10}{9}"));
    assert!(!eq("\\frac{1}{2004!}", "\\frac{1}{2006!}"));
    assert!(!eq("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"));
    assert!(!eq("\\frac{1023}{1024}", "1"));
    assert!(!eq("7", "\\frac{673897}{96283}"));
    assert!(!eq("\\frac{6}{11}", "\\frac{27}{50}"));
    assert!(eq("\\frac{6}{11}", "0.\\overline{54}"));
}

#[test]
fn decimal_precision_rule() {
    assert!(eq("\\frac{10}{11}", "0.9091"));
    assert!(eq("\\sqrt{17}", "4.1231"));
    assert!(eq("4", "3.999999"));
    assert!(!eq("12", "11.9"));
    assert!(!eq("\\frac{6}{11}", "0.5"));
    assert!(!eq("563.51", "563.5"));
    assert!(eq("563.51", "563.5123"));
    assert!(eq("0.03", "0.0273"));
    assert!(!eq("0.6", "0.54"));
    assert!(!eq("0.0", "0.0206"));
    let o = GradeOptions::default();
    assert!(eq_with("583.3333", "583.33", &o, true).is_some());
    assert!(eq_with("15.62", "15.63", &o, true).is_some());
    assert!(eq_with("0.6667", "0.667", &o, true).is_some());
    assert!(eq_with("583.3333", "\\frac{1750}{3}", &o, true).is_some());
    assert!(eq_with("83.33", "83", &o, true).is_none());
    assert!(eq_with("30", "30.003", &o, true).is_some());
    assert!(eq_with("30", "30.03", &o, true).is_none());
    assert!(eq_with("0.165", "\\frac{1}{6}", &o, true).is_some());
    assert!(eq(
        "\\frac{130}{231}",
        "\\frac{476571389139735}{846830699163683}"
    ));
    assert!(eq("\\frac{3125}{46656}", "0.067"));
    assert!(eq("3:1", "3"));
    assert!(eq("\\text{(E)}", "{(e)}"));
    assert!(eq("0.75", "\\frac{3}{4}, 0.75"));
    let strict = GradeOptions {
        approx: ApproxPolicy::Exact,
        ..GradeOptions::default()
    };
    assert!(eq_with("\\frac{10}{11}", "0.9091", &strict, false).is_none());
    let mv = GradeOptions {
        float_rounding: Some(4),
        ..GradeOptions::default()
    };
    assert!(eq_with("1/3", "0.333", &mv, false).is_none());
}

#[test]
fn symbolic() {
    assert!(eq("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}"));
    assert!(eq("\\tan^2(y)+1", "\\sec^2(y)"));
    assert!(eq("2\\sqrt{2}", "\\sqrt{8}"));
    assert!(!eq("x+2n+1", "x+1"));
    assert!(!eq("(a+5)(b+2)", "(+5)(b+2)"));
    assert!(eq("-20*x", "-20x"));
    assert!(!eq("-20*x", "-20"));
    assert!(!eq("2^3", "2"));
    assert!(eq(
        "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}",
        "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}"
    ));
}

#[test]
fn relations_and_structures() {
    assert!(eq("34x+45y-20z+100=0", "-34x-45y+20z-100=0"));
    assert!(eq("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"));
    assert!(!eq("20x+23y+26z-69=0", "0"));
    assert!(eq("k=1", "1"));
    assert!(eq("1", "k=1"));
    assert!(eq("x \\leq 5", "5 \\geq x"));
    assert!(eq("x < 1", "-x > -1"));
    assert!(!eq("x < 1", "x > -1"));
    assert!(eq("-2 \\le x \\le 7", "x \\in [-2,7]"));
    assert!(eq("[0,1)", "[0,1)"));
    assert!(!eq("(0,9)", "[0,9)"));
    assert!(eq(
        "\\{1\\pm\\sqrt{5},-2\\}",
        "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}"
    ));
    assert!(eq("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"));
    assert!(eq("(3,1)", "(3,1)"));
    assert!(!eq("(3,1)", "\\{1,3\\}"));
    assert!(eq("-2,1", "1,-2"));
    assert!(eq(
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
        "\\begin{bmatrix}1 & 0 \\\\ 0 & 1\\end{bmatrix}"
    ));
    assert!(eq(
        "(-\\infty, -3] \\cup [2, \\infty)",
        "[2, \\infty) \\cup (-\\infty, -3]"
    ));
    assert!(eq("28\\%", "28"));
    assert!(eq("28\\%", "0.28"));
    assert!(!eq("0.28", "28"));
    assert!(!eq("28", "28/100"));
    assert!(eq("90^\\circ", "90"));
    assert!(eq("\\text{Evelyn}", "evelyn"));
    assert!(eq("[103]", "103"));
}
