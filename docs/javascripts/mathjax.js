// MathJax 2.7, served with the site (assets/mathjax/), typesets what pymdownx.arithmatex marks.
window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js"],
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    ignoreClass: ".*",
    processClass: "arithmatex",
  },
  "HTML-CSS": { availableFonts: [], webFont: "STIX-Web", imageFont: null },
  showMathMenu: false,
  messageStyle: "none",
};
