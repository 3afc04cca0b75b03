// Keeps the dashboard page the browser was sent from (/ui#/endpoints/churn): the fragment
// never reaches the server, so the form carries it; the server checks it before redirecting.
"use strict";
if (window.location.hash) {  // else keep what the server put back after a failed attempt
  document.getElementById("next").value = window.location.hash;
}
