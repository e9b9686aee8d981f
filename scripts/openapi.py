#!/usr/bin/env python3
"""Writes src/api/openapi.json: python3 scripts/openapi.py > src/api/openapi.json

The document is kept in the repo and served at /api/v1/openapi.json; tests/api.rs
runs schemathesis against the running daemon with it."""
import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def resp(desc, schema=None, ctype="application/json"):
    r={"description":desc}
    if schema is not None: r["content"]={ctype:{"schema":schema}}
    return r
ERR=ref("Error")
def errors(*codes):
    d={}
    names={400:"Bad request",401:"No valid token",403:"The role may not do this",404:"Not found (or not visible)",405:"Method not allowed",413:"Body too large",422:"Invalid input",429:"Rate limited",501:"Not implemented"}
    for c in codes: d[str(c)]=resp(names[c],ERR)
    return d
APP={"name":"app","in":"path","required":True,"schema":{"type":"string","pattern":"^[a-z][a-z0-9-]{0,62}$"}}
def op(summary, ok_code, ok_schema, *errs, params=None, body=None, ok_desc="OK", ctype="application/json", opid=None):
    o={"summary":summary,"operationId":opid,"responses":{str(ok_code):resp(ok_desc, ok_schema, ctype)}}
    o["responses"].update(errors(401,429,*errs))
    if params: o["parameters"]=params
    if body is not None:
        o["requestBody"]={"required":True,"content":{"application/json":{"schema":body}}}
    return o
obj=lambda props, req=(), extra=True: {"type":"object","properties":props,"required":list(req),"additionalProperties":extra}
S={"type":"string"}; I={"type":"integer"}; B={"type":"boolean"}; N_S={"type":"string","nullable":True}; N_I={"type":"integer","nullable":True}
arr=lambda x: {"type":"array","items":x}
schemas={
 "Error": obj({"id":S,"message":S},["id","message"]),
 "AppSummary": obj({"name":S,"url":S,"created_at":I,"stopped":B},["name","url"]),
 "App": obj({"name":S,"url":S,"domains":arr(S),"created_at":I,"deploy_branch":S,"live_release":N_I,"live_sha":N_S,"builder":N_S,"runtime":S,"formation":{"type":"object","additionalProperties":I},"stopped":B},["name","url"]),
 "ConfigVars": {"type":"object","additionalProperties":S},
 "ConfigPatch": {"type":"object","additionalProperties":{"type":"string","nullable":True},"description":"KEY: value sets, KEY: null unsets"},
 "ConfigResult": obj({"config_vars":ref("ConfigVars"),"release":N_I,"output":arr(S)},["config_vars"]),
 "Domains": obj({"default":S,"custom":arr(S)},["default","custom"]),
 "Formation": arr(obj({"type":S,"quantity":I,"command":N_S},["type","quantity"])),
 "FormationPatch": obj({"updates":arr(obj({"type":S,"quantity":{"type":"integer","minimum":0}},["type","quantity"],False))},["updates"],False),
 "Dyno": obj({"name":S,"type":S,"release":I,"state":{"type":"string","enum":["starting","running","crashed","stopped","draining"]},"started_at":I,"restarts":I},["name","type","release","state"]),
 "Release": obj({"app":S,"version":I,"sha":N_S,"description":S,"builder":N_S,"processes":{"type":"object","additionalProperties":S},"status":S,"failed_stage":N_S,"error":N_S,"created_at":I},["app","version","status"]),
 "LogLine": obj({"time":S,"source":S,"text":S},["time","source","text"]),
 "Cert": {"type":"object","additionalProperties":True},
 "Key": obj({"name":S,"fingerprint":S,"role":S,"created_at":I,"apps":arr(S)},["name","fingerprint","role"]),
 "Token": obj({"name":S,"role":S,"created_by":S,"created_at":I,"expires_at":N_I,"last_used_at":N_I,"apps":arr(S)},["name","role"]),
 "NewToken": obj({"name":S,"role":{"type":"string","enum":["admin","developer","deployer","viewer"]},"apps":arr(S),"expires":{"type":"string","description":"90m, 12h, 30d or 2w"}},["name","role"]),
 "CreatedToken": obj({"name":S,"role":S,"apps":arr(S),"expires_at":N_I,"token":S},["name","role","token"]),
 "AuditEntry": obj({"id":I,"at":I,"actor":S,"actor_kind":S,"role":S,"source":S,"address":N_S,"action":S,"app":N_S,"detail":S,"result":{"type":"string","enum":["ok","denied","failed"]},"message":S},["at","actor","action","result"]),
 "Status": obj({"version":S,"runtime":S,"domain":S,"apps":arr(obj({"name":S,"url":S}))},["version","runtime"]),
 "Output": obj({"output":arr(S)}),
 "Preview": obj({"name":S,"app":S,"branch":S,"url":S,"release":N_S,"state":S,"last_deploy":N_I,"last_active":I},["name","app","branch","url","state"]),
 "Build": obj({"id":S,"app":S,"status":{"type":"string","enum":["pending","succeeded","failed"]},"release":N_I,"output":arr(S),"error":N_S},["id","app","status"]),
 "Sync": obj({"id":I,"url":{"type":"string","description":"credentials masked as ***"},"ref":S,"trigger":{"type":"string","enum":["manual","create","schedule"]},
   "state":{"type":"string","enum":["queued","fetching","analysing","building","deploying","healthy","live","failed"]},
   "states":arr(S),"sha":N_S,"release":N_I,"error":N_S,"created_at":I,"updated_at":I},["id","url","ref","state","states"]),
}
paths={
 "/status":{"get":op("The daemon and the apps you see",200,ref("Status"),opid="getStatus")},
 "/apps":{"get":op("List apps",200,arr(ref("AppSummary")),opid="listApps"),
          "post":op("Create an app (admins); with `from`, deploy it from that repository URL (the answer's `sync` is the record to poll)",201,ref("AppSummary"),400,403,413,422,
                    body=obj({"name":S,"from":{"type":"string","description":"a repository URL: https (others if the admin allows)"},"branch":{"type":"string","description":"the branch of from (default main)"},"submodules":{"type":"boolean","description":"with from: fetch the commit's submodules too (https only; kept for later syncs)"}},["name"]),opid="createApp")},
 "/apps/{app}":{"parameters":[APP],
   "get":op("An app",200,ref("App"),404,422,opid="getApp"),
   "delete":op("Destroy an app (admins), confirm=APP",200,obj({"name":S,"destroyed":B}),403,404,422,params=[{"name":"confirm","in":"query","required":False,"schema":S}],opid="destroyApp")},
 "/apps/{app}/config-vars":{"parameters":[APP],
   "get":op("Config vars (masked for viewers)",200,ref("ConfigVars"),404,422,opid="getConfigVars"),
   "patch":op("Set (string) or unset (null) config vars",200,ref("ConfigResult"),400,403,404,413,422,params=[{"name":"restart","in":"query","required":False,"schema":B}],body=ref("ConfigPatch"),opid="patchConfigVars")},
 "/apps/{app}/domains":{"parameters":[APP],
   "get":op("Domains",200,ref("Domains"),404,422,opid="getDomains"),
   "post":op("Add a custom domain",201,obj({"hostname":S}),400,403,404,413,422,body=obj({"hostname":S},["hostname"]),opid="addDomain")},
 "/apps/{app}/domains/{hostname}":{"parameters":[APP,{"name":"hostname","in":"path","required":True,"schema":{"type":"string","pattern":"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"}}],
   "delete":op("Remove a custom domain",200,obj({"hostname":S,"removed":B}),403,404,422,opid="removeDomain")},
 "/apps/{app}/formation":{"parameters":[APP],
   "get":op("Process formation",200,ref("Formation"),404,422,opid="getFormation"),
   "patch":op("Scale process types",200,obj({"formation":ref("Formation"),"output":arr(S)}),400,403,404,413,422,body=ref("FormationPatch"),opid="patchFormation")},
 "/apps/{app}/dynos":{"parameters":[APP],
   "get":op("Instances",200,arr(ref("Dyno")),404,422,opid="listDynos"),
   "delete":op("Restart every instance",202,obj({"restarted":I,"output":arr(S)}),403,404,422,ok_desc="Restarted",opid="restartDynos")},
 "/apps/{app}/dynos/{type}":{"parameters":[APP,{"name":"type","in":"path","required":True,"schema":{"type":"string","pattern":"^[a-z][a-z0-9_-]{0,29}$"}}],
   "delete":op("Restart one process type",202,obj({"restarted":I,"output":arr(S)}),403,404,422,ok_desc="Restarted",opid="restartDynoType")},
 "/apps/{app}/actions/stop":{"parameters":[APP],"post":op("Stop every instance",200,obj({"name":S,"stopped":B,"output":arr(S)}),403,404,422,opid="stopApp")},
 "/apps/{app}/actions/start":{"parameters":[APP],"post":op("Start a stopped app",200,obj({"name":S,"stopped":B,"output":arr(S)}),403,404,422,opid="startApp")},
 "/apps/{app}/releases":{"parameters":[APP],
   "get":op("Releases, newest first",200,arr(ref("Release")),404,422,params=[{"name":"limit","in":"query","required":False,"schema":{"type":"integer","minimum":0,"maximum":10000}}],opid="listReleases"),
   "post":op("Roll back: a new release from an earlier one (default: the previous)",201,obj({"version":I,"output":arr(S)}),400,403,404,413,422,body=obj({"release":{"oneOf":[S,I],"nullable":True}}),opid="rollback")},
 "/apps/{app}/releases/{version}":{"parameters":[APP,{"name":"version","in":"path","required":True,"schema":{"type":"string","pattern":"^v?[0-9]{1,9}$"}}],
   "get":op("One release (v3 or 3)",200,ref("Release"),404,422,opid="getRelease")},
 "/apps/{app}/releases/{version}/build-log":{"parameters":[APP,{"name":"version","in":"path","required":True,"schema":{"type":"string","pattern":"^v?[0-9]{1,9}$"}}],
   "get":op("A release's build log",200,S,404,422,ctype="text/plain",opid="getBuildLog")},
 "/apps/{app}/logs":{"parameters":[APP],
   "get":op("Recent output; tail=true streams Server-Sent Events (one LogLine per data: line)",200,arr(ref("LogLine")),404,422,
        params=[{"name":"lines","in":"query","required":False,"schema":{"type":"integer","minimum":0,"maximum":100000}},{"name":"process","in":"query","required":False,"schema":S},{"name":"tail","in":"query","required":False,"schema":B}],opid="getLogs")},
 "/apps/{app}/certs":{"parameters":[APP],
   "get":op("Certificates of the app's hosts",200,arr(ref("Cert")),404,422,opid="getCerts"),
   "patch":op("Redirect plain HTTP to HTTPS (on/off)",200,obj({"redirect":B}),400,403,404,413,422,body=obj({"redirect":B},["redirect"]),opid="setRedirect")},
 "/apps/{app}/certs/renew":{"parameters":[APP],"post":op("Renew now",202,obj({"hosts":arr(S)}),403,404,422,ok_desc="Requested",opid="renewCerts")},
 "/apps/{app}/builds":{"parameters":[APP],"post":{**op("Deploy an uploaded source tarball (tar.gz), through the same pipeline as a push",202,ref("Build"),400,403,404,413,422,ok_desc="Accepted",opid="createBuild"),
     "requestBody":{"required":True,"content":{"application/gzip":{"schema":{"type":"string","format":"binary"}}}}}},
 "/apps/{app}/builds/{id}":{"parameters":[APP,{"name":"id","in":"path","required":True,"schema":S}],"get":op("A build: its status, stages and output",200,ref("Build"),404,422,opid="getBuild")},
 "/apps/{app}/sync":{"parameters":[APP],"post":op("Fetch the app's source URL (or url) at ref and deploy it, through the same pipeline as a push",202,ref("Sync"),400,403,404,413,422,ok_desc="Accepted",
     body=obj({"url":S,"ref":{"type":"string","description":"a branch or refs/tags/T"},"submodules":{"type":"boolean","description":"fetch the commit's submodules (https only); default: the source's setting; kept"}}),opid="startSync")},
 "/apps/{app}/syncs/{id}":{"parameters":[APP,{"name":"id","in":"path","required":True,"schema":I}],"get":op("A sync: its state, the states it passed, its commit and release",200,ref("Sync"),404,422,opid="getSync")},
 "/apps/{app}/previews":{"parameters":[APP],"get":op("Preview environments (previews:enable), by name",200,arr(ref("Preview")),404,422,opid="listPreviews")},
 "/apps/{app}/previews/{name}":{"parameters":[APP,{"name":"name","in":"path","required":True,"schema":{"type":"string","pattern":"^[a-z][a-z0-9-]{0,62}$"}}],
   "delete":op("Destroy a preview (its branch stays)",200,obj({"app":S,"name":S,"destroyed":B}),403,404,422,opid="destroyPreview")},
 "/certs":{"get":op("Every app's certificates (admins)",200,arr(ref("Cert")),403,opid="listCerts")},
 "/keys":{"get":op("SSH keys (admins)",200,arr(ref("Key")),403,opid="listKeys"),
          "post":op("Add an SSH key (admins)",201,obj({"name":S,"role":S,"fingerprint":S}),400,403,413,422,body=obj({"name":S,"public_key":S,"role":S},["name","public_key"]),opid="addKey")},
 "/keys/{key}":{"parameters":[{"name":"key","in":"path","required":True,"schema":S}],"delete":op("Remove a key by name or fingerprint (admins)",200,ref("Key"),403,422,opid="removeKey")},
 "/keys/{key}/apps/{app}":{"parameters":[{"name":"key","in":"path","required":True,"schema":S},APP],
   "put":op("Grant a key an app (admins)",200,obj({"key":S,"app":S,"granted":B}),403,404,422,opid="grantKey"),
   "delete":op("Take an app from a key (admins)",200,obj({"key":S,"app":S,"granted":B}),403,404,422,opid="revokeKey")},
 "/tokens":{"get":op("API tokens (admins)",200,arr(ref("Token")),403,opid="listTokens"),
            "post":op("Create a token; the text is in the response once",201,ref("CreatedToken"),400,403,413,422,body=ref("NewToken"),opid="createToken")},
 "/tokens/{name}":{"parameters":[{"name":"name","in":"path","required":True,"schema":S}],"delete":op("Revoke a token (admins)",200,obj({"name":S,"revoked":B}),403,422,opid="revokeToken")},
 "/audit":{"get":op("Audit log, oldest first (admins: all; others: their apps)",200,arr(ref("AuditEntry")),404,422,
        params=[{"name":"app","in":"query","required":False,"schema":S},{"name":"limit","in":"query","required":False,"schema":{"type":"integer","minimum":0,"maximum":10000}}],opid="listAudit")},
}
paths["/apps/{app}/logs"]["get"]["responses"]["200"]["content"]["text/event-stream"]={"schema":{"type":"string"}}
doc={"openapi":"3.0.3",
 "info":{"title":"Cygni API","version":"1","description":"Cygni's HTTP API. Every SSH command as a resource; Heroku Platform API names where it has the same resource. Errors: {id, message}, with the same one-line message SSH gives."},
 "servers":[{"url":"/api/v1"}],
 "security":[{"bearer":[]}],
 "components":{"securitySchemes":{"bearer":{"type":"http","scheme":"bearer"}},"schemas":schemas},
 "paths":paths}
print(json.dumps(doc, indent=1))
