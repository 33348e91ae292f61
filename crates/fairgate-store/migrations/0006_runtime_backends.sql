-- Backends changed at run time, kept for every replica under [cluster] (issue 13). Portable
-- DDL only, like 0001. `config` is the backend's JSON as the admin API takes it, without an
-- inline API key (those are refused under [cluster]); empty for a backend the config file
-- declares, whose row then only carries its state. `state`: active, draining or removed.
CREATE TABLE runtime_backends (
    model TEXT NOT NULL,
    url TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model, url)
);
