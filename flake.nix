{
  description = "bitloop: a closed-loop MLOps system for tabular models";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    pyproject-nix = {
      url = "github:pyproject-nix/pyproject.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    uv2nix = {
      url = "github:pyproject-nix/uv2nix";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    pyproject-build-systems = {
      url = "github:pyproject-nix/build-system-pkgs";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.uv2nix.follows = "uv2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, pyproject-nix, uv2nix, pyproject-build-systems }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The Python environments come from uv.lock, the same pins `make setup` installs.
      workspace = uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; };
      overlay = workspace.mkPyprojectOverlay { sourcePreference = "wheel"; };
      pythonSet = pkgs:
        (pkgs.callPackage pyproject-nix.build.packages { python = pkgs.python311; }).overrideScope
          (lib.composeManyExtensions [ pyproject-build-systems.overlays.default overlay ]);
      venv = pkgs: name: groups: (pythonSet pkgs).mkVirtualEnv "bitloop-${name}-env" groups;

      # What each image installs: the project plus the dependency groups of its role.
      roles = {
        api = { groups = [ "serving" ]; cmd = [ "python" "-m" "api" ]; port = 8000; };
        datasource = { groups = [ "datasource" ]; cmd = [ "python" "-m" "pipeline" "serve-data" "--host" "0.0.0.0" "--port" "8001" ]; port = 8001; };
        mlflow = { groups = [ "tracking" "postgres" ]; cmd = [ "mlflow" "server" "--host" "0.0.0.0" "--port" "5000" "--workers" "1" "--artifacts-destination" "/var/lib/mlflow/artifacts" "--expose-prometheus" "/var/lib/mlflow/metrics" ]; port = 5000; };
        pipeline = { groups = [ "pipeline" "postgres" ]; cmd = [ "airflow" "api-server" ]; port = 8080; };
      };

      # The project files the pipeline image runs from: a git-free DVC project (params, stages,
      # the stages' sources, the remote's config) and the DAGs.
      projectFiles = pkgs: pkgs.runCommand "bitloop-project" { } ''
        mkdir -p $out/opt/bitloop/.dvc
        cp ${./params.yaml} $out/opt/bitloop/params.yaml
        cp ${./dvc.yaml} $out/opt/bitloop/dvc.yaml
        cp ${./.dvcignore} $out/opt/bitloop/.dvcignore
        cp ${./.dvc/config} $out/opt/bitloop/.dvc/config
        cp -r ${./core} $out/opt/bitloop/core
        cp -r ${./pipeline} $out/opt/bitloop/pipeline
        cp -r ${./dags} $out/opt/bitloop/dags
        install -D -m 0755 ${./ops/docker/healthcheck.py} $out/usr/local/bin/healthcheck
        install -D -m 0755 ${./ops/docker/secrets-env} $out/usr/local/bin/secrets-env
      '';

      image = pkgs: name: role:
        pkgs.dockerTools.streamLayeredImage {
          name = "bitloop-${name}";
          tag = "latest";
          created = "1970-01-01T00:00:01Z";
          contents = [
            (venv pkgs name { bitloop = role.groups; })
            (projectFiles pkgs)
            pkgs.bashInteractive
            pkgs.coreutils
            pkgs.cacert
            pkgs.dockerTools.fakeNss
          ];
          fakeRootCommands = ''
            mkdir -p tmp var/lib/bitloop var/lib/mlflow/artifacts var/lib/mlflow/metrics opt/airflow \
              opt/bitloop/data opt/bitloop/models opt/bitloop/reports opt/bitloop/.bitloop
            chmod 1777 tmp
            chown -R 10001:10001 var/lib/bitloop var/lib/mlflow opt/airflow opt/bitloop
          '';
          enableFakechroot = true;
          config = {
            User = "10001:10001";
            WorkingDir = "/opt/bitloop";
            Entrypoint = [ "/usr/local/bin/secrets-env" ];
            Cmd = role.cmd;
            ExposedPorts = { "${toString role.port}/tcp" = { }; };
            Env = [
              "PYTHONHASHSEED=0"
              "PYTHONUNBUFFERED=1"
              "MLFLOW_DISABLE_TELEMETRY=true"
              "DO_NOT_TRACK=true"
              "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
              "BITLOOP_PROJECT_DIR=/opt/bitloop"
              "AIRFLOW_HOME=/opt/airflow"
              "AIRFLOW__CORE__DAGS_FOLDER=/opt/bitloop/dags"
              "AIRFLOW__CORE__LOAD_EXAMPLES=False"
            ];
            Healthcheck = {
              Test = [ "CMD" "python" "/usr/local/bin/healthcheck" "http://127.0.0.1:${toString role.port}/health" ];
              Interval = 10000000000;
              Timeout = 5000000000;
              Retries = 3;
            };
          };
        };
    in
    {
      packages = forAllSystems (pkgs:
        lib.mapAttrs' (name: role: lib.nameValuePair "${name}-image" (image pkgs name role)) roles);

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (venv pkgs "dev" workspace.deps.all)
            pkgs.uv
            pkgs.gnumake
            pkgs.git
            pkgs.prometheus
            pkgs.prometheus-pushgateway
            pkgs.prometheus-process-exporter
            pkgs.grafana
            pkgs.docker-compose
            pkgs.actionlint
            pkgs.wrk
          ];
          env = {
            UV_NO_SYNC = "1";
            UV_PYTHON_DOWNLOADS = "never";
            MLFLOW_DISABLE_TELEMETRY = "true";
            DO_NOT_TRACK = "true";
          };
        };
      });
    };
}
