"""PACS access over DICOMweb: query, retrieve, score and answer studies (`cadx.pacs.client`,
`cadx.pacs.study`, `cadx.pacs.watch`)."""
