// Starts Swagger UI on the spec named by the page (a URL relative to <base>, so the docs also
// work behind a proxy prefix). A file, not an inline script: the page's CSP allows only 'self'.
"use strict";
(function () {
  var node = document.getElementById("swagger-ui");
  var spec = new URL(node.getAttribute("data-spec"), document.baseURI).href;
  window.ui = SwaggerUIBundle({
    url: spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The browser sends the dashboard's session cookie itself (same origin); a script or a
    // user without one uses the Authorize button (a bearer API key).
    withCredentials: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,  // the default badge would ask validator.swagger.io
  });
})();
